//! Canary rollouts: the engine that moves each rollout through its stages.
//!
//! A rollout (see `flotilla_shared::rollout`) updates one container target across the agents
//! matching a selector, stage by stage. All of its state lives in SQLite (`store/rollouts.rs`,
//! `store/sqlite/rollouts.rs`): the rollout row (state, current stage, its phase, absolute
//! deadlines), one row per member agent (stage, position, outcome) and one per target
//! container (its `container.update` command id, outcome, old image, revert command id), plus
//! an event log of every transition. The engine keeps nothing per agent in memory between
//! steps, so a relay restart resumes exactly where it was.
//!
//! [`RolloutEngine::run`] wakes on a kick (an operator acted), on a completion of a rollout
//! command (the commands service publishes them) and every [`TICK`]; each wake is one
//! [`RolloutEngine::step`] at a given `now`, which advances each active rollout with
//! [`advance`] (tests call `step` directly with the time they want):
//! 1. refresh: the in-flight containers' deliveries that became final give their container an
//!    outcome; an agent whose containers are all final gets its outcome; a label target's
//!    finished `container.list` is expanded into one `container.update` per container, sent
//!    one at a time per agent (the next after the previous finished: parallelism counts
//!    agents, and one agent's containers never restart all at once); a late result that
//!    replaced a relay guess (expired `undelivered`, `no_result`) classifies its container
//!    again;
//! 2. soak check of the current stage's updated members (heartbeat cache, hub, stored events);
//! 3. failure threshold: failures of the current stage beyond `max_failures` (plus those
//!    accepted at a resume) fire the failure action at once;
//! 4. dispatch (up to `parallelism` agents in flight, connected agents only; one SQLite
//!    transaction inserts the command AND records its id on the member, so an agent is never
//!    updated twice), stage deadline (members still offline end `undelivered`; connected ones
//!    waiting for a slot keep being dispatched), soak start and end (a stage that updated
//!    nobody pauses instead), the next stage's membership;
//! 5. while reverting: updated containers, and those whose update may have happened (no
//!    result), go back to their old image with the same parallelism, on connected agents
//!    only, until the revert deadline (stage timeout after the revert started; then
//!    `revert_failed`, "agent offline").
//!
//! Every store write that starts work (dispatch, expansion, deadline, revert) checks the
//! rollout's state in its own transaction, so an operator's pause or abort always wins. An
//! aborted rollout with updates still in flight stays active (refreshed, and a conflict for
//! new rollouts) until they finish.
//!
//! Agent rollouts (target [`RolloutTarget::Agent`], `image` = the agent version) reuse all of
//! this with one target per member, [`AGENT_TARGET_NAME`]: dispatch resolves the build for the
//! member's architecture ([`crate::releases::upgrade_command`]) and sends `agent.upgrade`, or
//! ends the member without a command (`no_target`: no build for its architecture, or it runs
//! the version already or a newer one, reason [`ALREADY_RUNS`]…, which counts as done: a stage
//! of such members passes without pausing; `skipped`: the build is marked broken, checked again
//! in the transaction that would insert the command, so a reverted upgrade stops the version at
//! once). A member whose agent has unfinished container or backup work that changes something
//! (`container.update/start/stop/restart`, `backup.run/restore`) stays pending, without taking
//! a parallelism slot, until that work finished: the upgrade restarts the agent. The soak is
//! [`agent_soak_verdict`] with the version the agent announced on its live connection; a revert
//! is `agent.upgrade` with `rollback` to the member's previous version, when the relay has that
//! build, or nothing at all when the agent already runs that version again (its updater
//! reverted it): the member is reverted as it stands.
//!
//! The decisions are pure functions below ([`select_members`], [`threshold_exceeded`],
//! [`apply_action`], [`classify_update`], [`soak_verdict`], [`agent_soak_verdict`]) so they are
//! unit tested without a database.

use crate::commands::{Commands, TtlOutOfRange};
use crate::config::RelayConfig;
use crate::heartbeats::HeartbeatCache;
use crate::hub::Hub;
use crate::model::rollouts::*;
use crate::releases::UpgradeRefusal;
use crate::store::{NewCommand, Store, StoreError};
use crate::stream::EventBus;
use chrono::{DateTime, Utc};
use flotilla_shared::command::{Command, ContainerListArgs, ContainerListOutput};
use flotilla_shared::release::compare_versions;
use flotilla_shared::release::UpgradeRequest;
use flotilla_shared::rollout::{
    AgentOutcome, RolloutState, RolloutTarget, RolloutTransition, StagePhase, StageWhat,
    AGENT_TARGET_NAME,
};
use flotilla_shared::stream::EventKind;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

/// Why a rollout step failed: the store, or a command the TTL policy refused (the step is
/// retried at the next tick either way; nothing half-done is left, see the module doc).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot issue a rollout command: {0}")]
    Ttl(#[from] TtlOutOfRange),
}

/// How often the engine looks at active rollouts without being kicked (soak checks, deadlines).
pub const TICK: Duration = Duration::from_secs(1);

/// How long an agent may be offline (no live connection, no heartbeat) during a soak before it
/// counts as failed: the `agent_unreachable` alert's threshold (by default three heartbeat
/// intervals), so a soak failure and the unreachable alert agree.
pub fn offline_threshold(config: &RelayConfig) -> Duration {
    crate::alerts::unreachable_after(config)
}

// === engine ===

/// Asks the engine to look at the active rollouts now.
#[derive(Clone, Default)]
pub struct RolloutKicker(Arc<tokio::sync::Notify>);

impl RolloutKicker {
    /// Wakes the engine of this relay (one pending kick is enough: the engine looks at every
    /// active rollout when it wakes). The API also signals the other relays, one of which may
    /// run the engine (`crate::cluster`).
    pub fn kick(&self) {
        self.0.notify_one();
    }

    async fn kicked(&self) {
        self.0.notified().await
    }
}

/// The rollout engine: exactly what advancing rollouts uses. Cheap to clone.
#[derive(Clone)]
pub struct RolloutEngine {
    store: Store,
    commands: Commands,
    hub: Arc<Hub>,
    heartbeats: Arc<HeartbeatCache>,
    /// When this relay started: an agent's soak is not judged offline before it could have
    /// reconnected to a freshly started relay.
    started_at: DateTime<Utc>,
    /// How long without a heartbeat makes a member offline ([`offline_threshold`]).
    offline_threshold: Duration,
}

impl RolloutEngine {
    pub fn new(
        store: Store,
        commands: Commands,
        hub: Arc<Hub>,
        heartbeats: Arc<HeartbeatCache>,
        started_at: DateTime<Utc>,
        config: &RelayConfig,
    ) -> RolloutEngine {
        RolloutEngine {
            store,
            commands,
            hub,
            heartbeats,
            started_at,
            offline_threshold: offline_threshold(config),
        }
    }

    /// One pass at `now`: advances every active rollout.
    pub async fn step(&self, now: DateTime<Utc>) -> Result<(), StepError> {
        for id in self.store.active_rollouts().await? {
            if let Err(e) = advance(self, &id, now).await {
                tracing::error!(rollout_id = %id, error = %e, "cannot advance rollout");
            }
        }
        Ok(())
    }

    /// Runs until shutdown: a pass on each kick (from the API), each completion of a rollout
    /// command, and every [`TICK`].
    pub async fn run(self, kicks: RolloutKicker, shutdown: CancellationToken) {
        let mut completions = self.commands.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = kicks.kicked() => {}
                c = completions.recv() => match c {
                    Ok(c) if c.command_id.starts_with(COMMAND_PREFIX) => {}
                    Ok(_) => continue,
                    // Missed some: a pass looks at everything anyway.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
            }
            // Everything that finished meanwhile is covered by this one pass: completions
            // coalesce (a stage of N members finishing is one or two passes, not N).
            while let Ok(_) | Err(TryRecvError::Lagged(_)) = completions.try_recv() {}
            if let Err(e) = self.step(crate::store::now()).await {
                tracing::error!(error = %e, "cannot list active rollouts");
            }
        }
    }
}

/// Announces one rollout transition the store just confirmed (subject: the rollout): one
/// event per rollout transition, never one per member. The engine calls it after
/// [`set_progress`], the API after an operator's create or action.
pub fn publish_transition(
    stream: &EventBus,
    id: &str,
    action: &str,
    state: RolloutState,
    stage: usize,
    phase: StagePhase,
) {
    stream.publish(
        EventKind::RolloutTransition,
        None,
        Some(id),
        format!(
            "rollout {id}: {action} (stage {}, {}, {})",
            stage + 1,
            state.as_str(),
            phase.as_str()
        ),
        Some(serde_json::json!({
            "action": action,
            "state": state.as_str(),
            "stage": stage,
            "phase": phase.as_str(),
        })),
    );
}

/// Writes the rollout's next position if it is still where `row` saw it
/// ([`Store::set_rollout_progress`]) and, when that applied, publishes the transition.
async fn set_progress(
    engine: &RolloutEngine,
    row: &RolloutRow,
    next: Progress,
    t: Transition,
) -> Result<bool, StepError> {
    let (state, stage, phase, action) = (next.state, next.stage, next.phase, t.action);
    let applied = engine
        .store
        .set_rollout_progress(
            row.id.clone(),
            row.progress.updated_at,
            next,
            t,
            ENGINE_ACTOR.into(),
        )
        .await?;
    if applied {
        let stream = engine.commands.stream();
        publish_transition(stream, &row.id, action.as_str(), state, stage, phase);
    }
    Ok(applied)
}

/// A new rollout command id.
pub fn new_command_id() -> String {
    flotilla_shared::ids::new_id(COMMAND_PREFIX)
}

fn agent_command(
    engine: &RolloutEngine,
    agent_id: &str,
    command: Command,
    created_by: &str,
) -> Result<NewCommand, StepError> {
    engine
        .commands
        .new_agent_command(&new_command_id(), agent_id, command, None, created_by)
        .map_err(StepError::from)
}

/// One step of one rollout (idempotent; see the module doc).
pub async fn advance(
    engine: &RolloutEngine,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    // Failures are detected from here on (update results in the refresh, soak checks after).
    let detected = Instant::now();
    // 1. Refresh in-flight containers and agents from their deliveries.
    let expansions = engine.store.refresh_rollout(id.to_string(), now).await?;
    let Some(row) = engine.store.rollout_row(id.to_string()).await? else {
        return Ok(());
    };
    for (agent_id, list) in expansions {
        expand_label_agent(engine, &row, &agent_id, list).await?;
    }
    if row.progress.state == RolloutState::Running {
        // A label agent's next queued container, once its previous one finished.
        for (agent_id, name) in engine.store.next_rollout_containers(id.to_string()).await? {
            let c = agent_command(
                engine,
                &agent_id,
                Command::ContainerUpdate(row.spec.update_args(&name, &row.spec.image)),
                &row.progress_actor(),
            )?;
            let send = c.clone();
            if engine
                .store
                .dispatch_rollout_container(id.to_string(), agent_id.clone(), name, c)
                .await?
            {
                engine
                    .commands
                    .dispatch(&send.id, &send.signed, &[agent_id])
                    .await?;
            }
        }
    }
    match row.progress.state {
        RolloutState::Running => advance_running(engine, row, detected, now).await,
        RolloutState::Reverting => advance_reverting(engine, row, now).await,
        _ => Ok(()),
    }
}

/// A label target's `container.list` finished: one update per listed container (or
/// `no_target`, or the list's failure).
async fn expand_label_agent(
    engine: &RolloutEngine,
    row: &RolloutRow,
    agent_id: &str,
    list: Result<ContainerListOutput, UpdateVerdict>,
) -> Result<(), StepError> {
    let stopped = row.progress.state.is_final() || row.progress.state == RolloutState::Reverting;
    if row.progress.state == RolloutState::Paused && list.is_ok() {
        // Expanded on resume (the store also refuses an expansion unless running).
        return Ok(());
    }
    let updates = match list {
        Ok(out) if !stopped => out
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let cmd = Command::ContainerUpdate(row.spec.update_args(&c.name, &row.spec.image));
                Ok(ContainerDispatch {
                    name: c.name.clone(),
                    old_image: Some(c.image.clone()).filter(|i| !i.is_empty()),
                    // One container at a time per agent: the first now, the others queued.
                    command: if i == 0 {
                        Some(agent_command(engine, agent_id, cmd, &row.progress_actor())?)
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>, StepError>>()?,
        Ok(_) => {
            engine
                .store
                .set_agent_outcome(
                    row.id.clone(),
                    agent_id.to_string(),
                    AgentOutcome::Skipped,
                    Some("the rollout stopped before its containers were updated".into()),
                )
                .await?;
            return Ok(());
        }
        Err(v) => {
            let (outcome, reason) = match v {
                UpdateVerdict::Undelivered => (AgentOutcome::Undelivered, None),
                UpdateVerdict::Failed { reason } => (
                    AgentOutcome::Failed,
                    Some(format!("container.list: {reason}")),
                ),
                _ => (AgentOutcome::NoTarget, None),
            };
            engine
                .store
                .set_agent_outcome(row.id.clone(), agent_id.to_string(), outcome, reason)
                .await?;
            return Ok(());
        }
    };
    let sends: Vec<NewCommand> = updates.iter().filter_map(|u| u.command.clone()).collect();
    if engine
        .store
        .expand_rollout_agent(row.id.clone(), agent_id.to_string(), updates)
        .await?
    {
        for c in sends {
            engine
                .commands
                .dispatch(&c.id, &c.signed, &[agent_id.to_string()])
                .await?;
        }
    }
    Ok(())
}

impl RolloutRow {
    /// Who the rollout's commands are created by (the operator who started it).
    fn progress_actor(&self) -> String {
        self.created_by.clone()
    }
}

/// A running rollout's step: its stage's membership first, then the soak check of the stage's
/// updated members and the failure threshold, then the current phase's own step.
async fn advance_running(
    engine: &RolloutEngine,
    row: RolloutRow,
    detected: Instant,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let p = &row.progress;
    if p.stage_started_at.is_none() {
        let n = engine
            .store
            .start_rollout_stage(row.id.clone(), p.clone(), now)
            .await?;
        tracing::info!(rollout_id = %row.id, stage = p.stage + 1, members = n, "rollout stage started");
        // 0 when another step got there first (or the stage added no member): nothing new.
        if n > 0 {
            publish_transition(
                engine.commands.stream(),
                &row.id,
                flotilla_shared::rollout::RolloutTransition::StageStarted.as_str(),
                p.state,
                p.stage,
                p.phase,
            );
        }
        return Box::pin(advance(engine, &row.id, now)).await;
    }
    let stage = engine.store.rollout_stage(row.id.clone(), p.stage).await?;
    let failures = check_soaks(engine, &row, &stage, now).await?;
    if apply_failure_threshold(engine, &row, &stage, failures, detected, now).await? {
        return Ok(());
    }
    match p.phase {
        StagePhase::Dispatching => step_dispatching(engine, &row, &stage, now).await,
        StagePhase::Soaking => step_soaking(engine, &row, now).await,
        StagePhase::Done => Ok(()),
    }
}

/// The soak check of the stage's updated members: those that failed it are marked failed.
/// Returns the stage's failures, counting the new ones.
async fn check_soaks(
    engine: &RolloutEngine,
    row: &RolloutRow,
    stage: &StageView,
    now: DateTime<Utc>,
) -> Result<u32, StepError> {
    let threshold = engine.offline_threshold;
    let mut new_failures = Vec::new();
    for m in &stage.updated {
        let events = stage
            .bad_events
            .get(&m.agent_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let hb = engine.heartbeats.latest(&m.agent_id);
        let verdict = match row.spec.target {
            RolloutTarget::Agent => agent_soak_verdict(
                m,
                &row.spec.image,
                engine.hub.is_connected(&m.agent_id),
                engine.hub.agent_version(&m.agent_id).as_deref(),
                hb.as_ref().map(|(h, at)| (h.as_ref(), *at)),
                threshold,
                engine.started_at,
                now,
            ),
            _ => soak_verdict(
                m,
                engine.hub.is_connected(&m.agent_id),
                hb.as_ref().map(|(h, at)| (h.as_ref(), *at)),
                events,
                threshold,
                engine.started_at,
                now,
            ),
        };
        if let Err(reason) = verdict {
            new_failures.push((m.agent_id.clone(), String::from(reason)));
        }
    }
    let failures = stage.failures + new_failures.len() as u32;
    if !new_failures.is_empty() {
        for (agent, reason) in &new_failures {
            tracing::info!(rollout_id = %row.id, agent_id = %agent, %reason, "rollout member failed its soak");
        }
        engine
            .store
            .fail_rollout_members(row.id.clone(), new_failures)
            .await?;
    }
    Ok(failures)
}

/// Fires the failure action when the stage's failures exceed its tolerance. True when it did
/// (the step is over; a revert has already taken its first step).
async fn apply_failure_threshold(
    engine: &RolloutEngine,
    row: &RolloutRow,
    stage: &StageView,
    failures: u32,
    detected: Instant,
    now: DateTime<Utc>,
) -> Result<bool, StepError> {
    let p = &row.progress;
    let max = failure_tolerance(row.spec.max_failures, stage.members);
    if !threshold_exceeded(failures, p.accepted_failures, max) {
        return Ok(false);
    }
    let (next, t) = fire_failure_action(p, row.spec.on_failure, failures, max, now);
    let applied = set_progress(engine, row, next.clone(), t).await?;
    if applied {
        tracing::info!(
            rollout_id = %row.id,
            action = %row.spec.on_failure,
            failures,
            max_failures = max,
            reaction_ms = detected.elapsed().as_millis() as u64,
            "rollout failure action applied"
        );
        if next.state == RolloutState::Reverting {
            Box::pin(advance(engine, &row.id, now)).await?;
        }
    }
    Ok(true)
}

/// The dispatching phase: offline members end undelivered at the stage deadline; once every
/// member finished, the stage soaks (or passes, or pauses when it updated nobody); until
/// then, connected pending members get their commands up to the parallelism.
async fn step_dispatching(
    engine: &RolloutEngine,
    row: &RolloutRow,
    stage: &StageView,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let p = &row.progress;
    // Members still offline at the stage deadline end undelivered; connected ones (waiting for
    // a parallelism slot) keep being dispatched below.
    if p.stage_deadline.is_some_and(|d| now >= d) && stage.pending > 0 {
        let offline: Vec<String> = stage
            .pending_agents
            .iter()
            .filter(|a| !engine.hub.is_connected(a))
            .cloned()
            .collect();
        if !offline.is_empty() {
            engine
                .store
                .rollout_stage_deadline(row.id.clone(), p.stage, offline)
                .await?;
            return Ok(());
        }
    }
    if stage.pending == 0 && stage.in_flight == 0 {
        return end_dispatching(engine, row, stage, now).await;
    }
    let slots = parallelism(row.spec.parallelism, stage.members).saturating_sub(stage.in_flight);
    let mut sent = 0;
    for agent_id in &stage.pending_agents {
        if sent >= slots {
            break;
        }
        if engine.hub.is_connected(agent_id) && dispatch_member(engine, row, agent_id).await? {
            sent += 1;
        }
    }
    Ok(())
}

/// Every member of the stage finished: pause when the stage updated nobody, else soak the
/// updated members (or pass the stage at once without a soak).
async fn end_dispatching(
    engine: &RolloutEngine,
    row: &RolloutRow,
    stage: &StageView,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let p = &row.progress;
    let agent_target = row.spec.target == RolloutTarget::Agent;
    let (next, t) = if let Some(why) = stage_updated_nobody(p.stage, stage, agent_target) {
        nobody_updated_pause(p, why, now)
    } else {
        let soak = row.spec.stages[p.stage].soak();
        if soak.is_zero() || stage.updated.is_empty() {
            return finish_stage(engine, row, now).await;
        }
        let mut next = p.clone();
        next.updated_at = now;
        next.phase = StagePhase::Soaking;
        next.soak_ends_at = Some(add_secs(now, soak.as_secs()));
        let t = Transition {
            action: RolloutTransition::SoakStarted,
            detail: format!(
                "stage {}: {} updated agent(s) soak for {}",
                p.stage + 1,
                stage.updated.len(),
                flotilla_shared::duration::format_duration(soak)
            ),
        };
        (next, t)
    };
    set_progress(engine, row, next, t).await?;
    Ok(())
}

/// Sends one pending, connected member its commands (an update, a label target's
/// `container.list`, or an agent upgrade), recorded with the dispatch in one transaction.
/// True when it was dispatched (it takes a parallelism slot).
async fn dispatch_member(
    engine: &RolloutEngine,
    row: &RolloutRow,
    agent_id: &String,
) -> Result<bool, StepError> {
    let p = &row.progress;
    let actor = row.progress_actor();
    let (list, updates) = match &row.spec.target {
        RolloutTarget::Container(name) => (
            None,
            vec![ContainerDispatch {
                name: name.clone(),
                old_image: engine.heartbeats.latest(agent_id).and_then(|(hb, _)| {
                    hb.docker
                        .containers
                        .iter()
                        .find(|c| &c.name == name)
                        .map(|c| c.image.clone())
                        .filter(|i| !i.is_empty())
                }),
                command: Some(agent_command(
                    engine,
                    agent_id,
                    Command::ContainerUpdate(row.spec.update_args(name, &row.spec.image)),
                    &actor,
                )?),
            }],
        ),
        RolloutTarget::Agent => {
            // The upgrade restarts the agent: not in the middle of container or backup work
            // (the store checks again when it inserts the command).
            if let Some(work) = engine.store.agent_busy(agent_id.clone()).await? {
                tracing::debug!(rollout_id = %row.id, agent_id = %agent_id, %work, "agent upgrade waits for unfinished work");
                return Ok(false);
            }
            match agent_upgrade_dispatch(engine, row, agent_id, &actor).await? {
                Ok(upgrade) => (None, vec![upgrade]),
                Err((outcome, reason)) => {
                    engine
                        .store
                        .end_pending_rollout_agent(
                            row.id.clone(),
                            agent_id.clone(),
                            p.stage,
                            outcome,
                            reason,
                        )
                        .await?;
                    return Ok(false);
                }
            }
        }
        RolloutTarget::Label { .. } => (
            Some(agent_command(
                engine,
                agent_id,
                // Running containers only: exited one-off containers (compose run,
                // migrations) carrying the label are not targets.
                Command::ContainerList(ContainerListArgs {
                    all: false,
                    label: row.spec.target.label_filter(),
                }),
                &actor,
            )?),
            Vec::new(),
        ),
    };
    let mut sends: Vec<NewCommand> = updates.iter().filter_map(|u| u.command.clone()).collect();
    sends.extend(list.clone());
    if !engine
        .store
        .dispatch_rollout_agent(row.id.clone(), agent_id.clone(), list, updates)
        .await?
    {
        return Ok(false);
    }
    for c in sends {
        engine
            .commands
            .dispatch(&c.id, &c.signed, std::slice::from_ref(agent_id))
            .await?;
    }
    Ok(true)
}

/// The soaking phase: the stage passes when its soak ends (failures were checked before).
async fn step_soaking(
    engine: &RolloutEngine,
    row: &RolloutRow,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    if row.progress.soak_ends_at.is_some_and(|t| now >= t) {
        return finish_stage(engine, row, now).await;
    }
    Ok(())
}

/// The current stage passed: the next stage starts, or the rollout completes.
async fn finish_stage(
    engine: &RolloutEngine,
    row: &RolloutRow,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let p = &row.progress;
    let mut next = p.clone();
    next.updated_at = now;
    next.soak_ends_at = None;
    next.accepted_failures = 0;
    let t = if p.stage + 1 < row.spec.stages.len() {
        next.stage += 1;
        next.phase = StagePhase::Dispatching;
        next.stage_started_at = None;
        next.stage_deadline = None;
        Transition {
            action: RolloutTransition::StageDone,
            detail: format!("stage {} passed", p.stage + 1),
        }
    } else {
        next.phase = StagePhase::Done;
        next.state = RolloutState::Completed;
        next.finished_at = Some(now);
        let partial = !matches!(
            row.spec.stages.last().map(|s| &s.what),
            Some(StageWhat::Percent(100))
        );
        Transition {
            action: RolloutTransition::Completed,
            detail: if partial {
                "every stage passed; the last stage is not 100%, so part of the fleet was not updated"
                    .into()
            } else {
                "every stage passed".into()
            },
        }
    };
    let applied = set_progress(engine, row, next, t).await?;
    tracing::info!(rollout_id = %row.id, stage = p.stage + 1, applied, "rollout stage finished");
    Ok(())
}

async fn advance_reverting(
    engine: &RolloutEngine,
    row: RolloutRow,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let plan = engine.store.rollout_revert_plan(row.id.clone()).await?;
    if plan.to_revert.is_empty() && plan.in_flight == 0 && plan.updating == 0 {
        let mut next = row.progress.clone();
        next.updated_at = now;
        next.finished_at = Some(now);
        let t = if plan.failed == 0 {
            next.state = RolloutState::Reverted;
            Transition {
                action: RolloutTransition::Reverted,
                detail: "every updated container is back on its previous image".into(),
            }
        } else {
            next.state = RolloutState::Aborted;
            next.reason = Some(format!("revert failed on {} agent(s)", plan.failed));
            Transition {
                action: RolloutTransition::Aborted,
                detail: format!("revert failed on {} agent(s)", plan.failed),
            }
        };
        set_progress(engine, &row, next, t).await?;
        return Ok(());
    }
    // Reverts go to connected agents only (a queued revert to an offline agent would take a
    // parallelism slot for nothing); an agent still offline at the revert deadline (the
    // reverting state's start plus stage_timeout) ends revert_failed.
    let deadline = revert_deadline(&row);
    let slots = parallelism(row.spec.parallelism, plan.members).saturating_sub(plan.in_flight);
    let mut sent = 0;
    for (agent_id, name, old_image) in plan.to_revert {
        if !engine.hub.is_connected(&agent_id) {
            if now >= deadline {
                engine
                    .store
                    .revert_rollout_container(
                        row.id.clone(),
                        agent_id,
                        name,
                        None,
                        "agent offline".into(),
                    )
                    .await?;
            }
            continue;
        }
        let agent_target = row.spec.target == RolloutTarget::Agent;
        let Some(old_image) = old_image else {
            let why = if agent_target {
                "the previous version is unknown"
            } else {
                "the previous image is unknown"
            };
            engine
                .store
                .revert_rollout_container(row.id.clone(), agent_id, name, None, why.into())
                .await?;
            continue;
        };
        if sent >= slots {
            continue;
        }
        let command = if agent_target {
            match agent_revert_command(engine, &agent_id, &old_image, &row.spec.image).await? {
                AgentRevert::Send(c) => c,
                AgentRevert::AlreadyThere(why) => {
                    tracing::info!(rollout_id = %row.id, agent_id = %agent_id, %why, "agent reverted without a command");
                    engine
                        .store
                        .revert_rollout_container_done(row.id.clone(), agent_id, name, why)
                        .await?;
                    continue;
                }
                AgentRevert::Impossible(why) => {
                    tracing::warn!(rollout_id = %row.id, agent_id = %agent_id, %why, "agent not reverted");
                    engine
                        .store
                        .revert_rollout_container(row.id.clone(), agent_id, name, None, why)
                        .await?;
                    continue;
                }
            }
        } else {
            Command::ContainerUpdate(row.spec.update_args(&name, &old_image))
        };
        let cmd = agent_command(engine, &agent_id, command, &row.progress_actor())?;
        let send = cmd.clone();
        if engine
            .store
            .revert_rollout_container(
                row.id.clone(),
                agent_id.clone(),
                name,
                Some(cmd),
                String::new(),
            )
            .await?
        {
            sent += 1;
            engine
                .commands
                .dispatch(&send.id, &send.signed, &[agent_id])
                .await?;
        }
    }
    Ok(())
}

/// An agent rollout's dispatch to one member: its `agent.upgrade` (the build for its
/// architecture), or the outcome it ends with, unsent, and why: `no_target` when its
/// architecture has no build of the version or it already runs that version or a newer one
/// (reason [`ALREADY_RUNS`]…), `skipped` when the build is marked broken.
async fn agent_upgrade_dispatch(
    engine: &RolloutEngine,
    row: &RolloutRow,
    agent_id: &str,
    actor: &str,
) -> Result<Result<ContainerDispatch, (AgentOutcome, String)>, StepError> {
    let Some(agent) = engine.store.agent(agent_id.to_string()).await? else {
        return Ok(Err((
            AgentOutcome::Skipped,
            "the agent no longer exists".into(),
        )));
    };
    let version = &row.spec.image;
    let running = crate::releases::running_version(&engine.hub, agent_id, &agent.agent_version);
    let req = UpgradeRequest {
        version: version.clone(),
        rollback: false,
    };
    Ok(
        match crate::releases::upgrade_command(
            &engine.store,
            agent_id,
            &agent.facts.arch,
            &running,
            &req,
        )
        .await?
        {
            Ok((command, _)) => Ok(ContainerDispatch {
                name: AGENT_TARGET_NAME.to_string(),
                old_image: Some(running).filter(|v| !v.is_empty()),
                command: Some(agent_command(engine, agent_id, command, actor)?),
            }),
            Err(UpgradeRefusal::Broken(why)) => Err((AgentOutcome::Skipped, why)),
            Err(UpgradeRefusal::AlreadyRuns { .. }) => {
                Err((AgentOutcome::NoTarget, format!("{ALREADY_RUNS}{version}")))
            }
            Err(UpgradeRefusal::NotNewer { .. }) => Err((
                AgentOutcome::NoTarget,
                format!("{ALREADY_RUNS}{running}, newer than {version}"),
            )),
            Err(other) => Err((AgentOutcome::NoTarget, other.to_string())),
        },
    )
}

/// What reverting one member of an agent rollout does.
#[derive(Debug)]
enum AgentRevert {
    /// Send this `agent.upgrade` with `rollback`.
    Send(Command),
    /// Nothing to send: the agent already runs the previous version again (its updater
    /// reverted it, or somebody installed it); the member counts as reverted, for this reason.
    AlreadyThere(String),
    /// It cannot be reverted (no build of the previous version, or it is broken): the member
    /// ends `revert_failed` with this reason.
    Impossible(String),
}

/// The `agent.upgrade` (with `rollback`) that takes an upgraded member of an agent rollout
/// back to `previous`, nothing when it already runs `previous` again (an agent refuses an
/// upgrade to the version it runs, even a rollback, so sending one would only fail the revert),
/// or why it cannot be sent (no build of the previous version for the agent's architecture on
/// the relay, or it is marked broken): the member then stays on `version`.
async fn agent_revert_command(
    engine: &RolloutEngine,
    agent_id: &str,
    previous: &str,
    version: &str,
) -> Result<AgentRevert, StepError> {
    let Some(agent) = engine.store.agent(agent_id.to_string()).await? else {
        return Ok(AgentRevert::Impossible("the agent no longer exists".into()));
    };
    let running = crate::releases::running_version(&engine.hub, agent_id, &agent.agent_version);
    if compare_versions(&running, previous).is_eq() {
        return Ok(AgentRevert::AlreadyThere(format!(
            "the agent already runs {running} again"
        )));
    }
    let req = UpgradeRequest {
        version: previous.to_string(),
        rollback: true,
    };
    Ok(
        match crate::releases::upgrade_command(
            &engine.store,
            agent_id,
            &agent.facts.arch,
            &running,
            &req,
        )
        .await?
        {
            Ok((command, _)) => AgentRevert::Send(command),
            Err(why) => AgentRevert::Impossible(format!(
                "not reverted to {previous} (left on {version}): {why}"
            )),
        },
    )
}
