//! The rollouts' pure model: the types a rollout is stored as (spec, progress, rows, views)
//! and the decisions that move it (member selection and order, thresholds, failure actions,
//! classification of update results, soak verdicts), with no I/O. The store persists these
//! types and calls these decisions inside its transactions; the engine (`crate::rollouts`)
//! reads, decides and writes through the store. Unit tested without a database.

use crate::model::commands::NewCommand;
use chrono::{DateTime, Utc};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::{error_codes, CommandResult, ContainerListOutput};
use flotilla_shared::heartbeat::Heartbeat;
use flotilla_shared::limit::Limit;
use flotilla_shared::release::compare_versions;
use flotilla_shared::rollout::{
    AgentOutcome, ContainerOutcome, FailureAction, RolloutAction, RolloutCounts, RolloutInfo,
    RolloutOrder, RolloutState, RolloutTarget, RolloutTransition, StagePhase, StageSpec, StageWhat,
};
use flotilla_shared::selector::{Labels, Selector};
use flotilla_shared::update::{ContainerUpdateArgs, HealthSpec, UpdateOutcome, UpdateStrategy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Prefix of every command a rollout issues (`cmd_ro_<hex>`), so finishing deliveries can kick
/// the engine without a lookup.
pub const COMMAND_PREFIX: &str = "cmd_ro";

/// Start of the reason of an agent rollout's member that ended `no_target` because it already
/// runs the target version or a newer one: done, not a member the stage failed to update.
pub const ALREADY_RUNS: &str = "already runs ";

/// The actor of the engine's own transitions in the event log.
pub const ENGINE_ACTOR: &str = "relay";

// === persisted types ===

/// Everything fixed when a rollout is created (stored as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub name: String,
    pub selector: Selector,
    pub target: RolloutTarget,
    pub image: String,
    pub stages: Vec<StageSpec>,
    pub order: RolloutOrder,
    /// Seed of the random order (kept so a restart keeps the order).
    pub seed: u64,
    pub max_failures: Limit,
    pub on_failure: FailureAction,
    pub parallelism: Limit,
    pub health: HealthSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_secs: Option<u32>,
    pub strategy: UpdateStrategy,
    pub stage_timeout_secs: u64,
    /// The members' updates may leave compose projects drifted (`allow_drift`; absent in
    /// rollouts stored before it existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_drift: bool,
}

impl RolloutSpec {
    /// The `container.update` arguments for one container.
    pub fn update_args(&self, container: &str, image: &str) -> ContainerUpdateArgs {
        ContainerUpdateArgs {
            container: container.to_string(),
            image: image.to_string(),
            health: self.health.clone(),
            health_timeout_secs: self.health_timeout_secs,
            stable_secs: self.stable_secs,
            strategy: self.strategy,
            allow_drift: self.allow_drift,
        }
    }
}

/// A rollout's mutable position (the rollout row's columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub state: RolloutState,
    pub reason: Option<String>,
    pub stage: usize,
    pub phase: StagePhase,
    /// None until the stage's members were chosen.
    pub stage_started_at: Option<DateTime<Utc>>,
    pub stage_deadline: Option<DateTime<Utc>>,
    /// Dispatch deadline left when paused.
    pub deadline_remaining_secs: Option<u64>,
    pub soak_ends_at: Option<DateTime<Utc>>,
    /// Soak left when paused during a soak.
    pub soak_remaining_secs: Option<u64>,
    pub accepted_failures: u32,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Progress {
    /// A new rollout: running, first stage not started.
    pub fn new(now: DateTime<Utc>) -> Progress {
        Progress {
            state: RolloutState::Running,
            reason: None,
            stage: 0,
            phase: StagePhase::Dispatching,
            stage_started_at: None,
            stage_deadline: None,
            deadline_remaining_secs: None,
            soak_ends_at: None,
            soak_remaining_secs: None,
            accepted_failures: 0,
            updated_at: now,
            finished_at: None,
        }
    }
}

/// A rollout as the engine reads it.
#[derive(Clone, Debug)]
pub struct RolloutRow {
    pub id: String,
    pub spec: RolloutSpec,
    pub progress: Progress,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A transition to record in the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub action: RolloutTransition,
    pub detail: String,
}

/// A non-revoked agent as stage membership sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetAgent {
    pub id: String,
    pub labels: Labels,
    pub enrolled_at: DateTime<Utc>,
}

// === pure decisions ===

/// Orders the fleet: newest enrolled first, oldest first, or shuffled by `seed` (a stable hash
/// of seed and agent id, so agents enrolled later slot in without reshuffling the others).
pub fn order_fleet(fleet: &mut [FleetAgent], order: RolloutOrder, seed: u64) {
    match order {
        RolloutOrder::NewestFirst => fleet.sort_by(|a, b| {
            b.enrolled_at
                .cmp(&a.enrolled_at)
                .then_with(|| a.id.cmp(&b.id))
        }),
        RolloutOrder::OldestFirst => fleet.sort_by(|a, b| {
            a.enrolled_at
                .cmp(&b.enrolled_at)
                .then_with(|| a.id.cmp(&b.id))
        }),
        RolloutOrder::Random => {
            fleet.sort_by_cached_key(|a| (seeded_hash(seed, &a.id), a.id.clone()));
        }
    }
}

/// FNV-1a over the seed and the text, finished with a splitmix64 step.
fn seeded_hash(seed: u64, s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How many fleet agents a percentage stage covers cumulatively: ceil(p × n / 100), at least
/// one (when the fleet is not empty), at most n.
pub fn cumulative_count(percent: u8, fleet_size: usize) -> usize {
    if fleet_size == 0 {
        return 0;
    }
    (fleet_size * usize::from(percent))
        .div_ceil(100)
        .clamp(1, fleet_size)
}

/// A stage's members: `fleet` must be ordered and hold only agents matching the rollout's
/// selector; `in_rollout` are the agents already in the rollout (any stage).
pub fn select_members(
    stage: &StageSpec,
    fleet: &[FleetAgent],
    in_rollout: &HashSet<String>,
) -> Vec<String> {
    match &stage.what {
        StageWhat::Percent(p) => {
            let target = cumulative_count(*p, fleet.len());
            let already = fleet.iter().filter(|a| in_rollout.contains(&a.id)).count();
            fleet
                .iter()
                .filter(|a| !in_rollout.contains(&a.id))
                .take(target.saturating_sub(already))
                .map(|a| a.id.clone())
                .collect()
        }
        StageWhat::Selector(sel) => fleet
            .iter()
            .filter(|a| !in_rollout.contains(&a.id) && sel.matches(&a.labels))
            .map(|a| a.id.clone())
            .collect(),
    }
}

/// Whether a stage's failures fire the failure action: more than `max_failures` beyond those
/// accepted when an operator resumed.
pub fn threshold_exceeded(failures: u32, accepted: u32, max_failures: usize) -> bool {
    failures.saturating_sub(accepted) as usize > max_failures
}

/// Failures a stage with `members` agents tolerates: a count as given, a percentage rounded
/// DOWN (10 % of a one-agent canary tolerates 0), unlike parallelism and stage sizes which
/// round up.
pub fn failure_tolerance(limit: Limit, members: usize) -> usize {
    match limit {
        Limit::Count(n) => n as usize,
        Limit::Percent(p) => members.saturating_mul(usize::from(p)) / 100,
    }
}

/// `t + secs`, saturating at the largest representable time instead of panicking (soaks and
/// deadlines are capped when a rollout is created; this keeps a corrupt row from panicking).
pub fn add_secs(t: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Parallelism of a stage with `members` agents: the limit resolved against them, at least 1.
pub fn parallelism(limit: Limit, members: usize) -> usize {
    limit.resolve(members).max(1)
}

/// Why a finished stage must not pass on silently: it had members and none of them was
/// updated (all undelivered, without a target, or failed within the tolerance). None when
/// somebody was updated, or the stage had no new member at all (earlier stages covered it),
/// or, for an agent rollout (`agent_target`), some member already ran the version or a newer
/// one (it is done: [`StageView::up_to_date`]).
pub fn stage_updated_nobody(
    stage_index: usize,
    v: &StageView,
    agent_target: bool,
) -> Option<String> {
    if v.members == 0 || v.counts.updated > 0 || !v.updated.is_empty() {
        return None;
    }
    if agent_target && v.up_to_date > 0 {
        return None;
    }
    let c = &v.counts;
    let no_target = if agent_target {
        "without a build for their architecture"
    } else {
        "without a target container"
    };
    let mut parts = Vec::new();
    for (n, what) in [
        (c.undelivered, "undelivered"),
        (c.no_target, no_target),
        (c.failed, "failed"),
        (c.skipped, "skipped"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    Some(format!(
        "stage {} updated no agent: {} of {} member(s); resume to go on to the next stage, or \
         abort",
        stage_index + 1,
        parts.join(", "),
        v.members
    ))
}

/// The pause of a stage that updated nobody: the stage is left as a finished zero-length soak,
/// so a resume moves on to the next stage instead of pausing again.
pub fn nobody_updated_pause(
    p: &Progress,
    reason: String,
    now: DateTime<Utc>,
) -> (Progress, Transition) {
    let mut done = p.clone();
    done.phase = StagePhase::Soaking;
    done.soak_ends_at = Some(now);
    pause(&done, reason, now)
}

/// The rollout after a failure action fired (`failures` in the stage, threshold `max`).
pub fn fire_failure_action(
    p: &Progress,
    action: FailureAction,
    failures: u32,
    max: usize,
    now: DateTime<Utc>,
) -> (Progress, Transition) {
    let why = format!(
        "{failures} failure(s) in stage {} exceed max-failures {max}",
        p.stage + 1
    );
    match action {
        FailureAction::Pause => pause(p, why, now),
        FailureAction::Abort => abort(p, false, why, now),
        FailureAction::Revert => abort(p, true, why, now),
    }
}

fn remaining_secs(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<u64> {
    until.map(|t| (t - now).num_seconds().max(0) as u64)
}

fn pause(p: &Progress, reason: String, now: DateTime<Utc>) -> (Progress, Transition) {
    let mut n = p.clone();
    n.state = RolloutState::Paused;
    n.reason = Some(reason.clone());
    n.deadline_remaining_secs = remaining_secs(p.stage_deadline, now);
    n.stage_deadline = None;
    if p.phase == StagePhase::Soaking {
        n.soak_remaining_secs = remaining_secs(p.soak_ends_at, now);
        n.soak_ends_at = None;
    }
    n.updated_at = now;
    (
        n,
        Transition {
            action: RolloutTransition::Paused,
            detail: reason,
        },
    )
}

fn abort(p: &Progress, revert: bool, reason: String, now: DateTime<Utc>) -> (Progress, Transition) {
    let mut n = p.clone();
    n.reason = Some(reason.clone());
    n.updated_at = now;
    n.soak_ends_at = None;
    n.soak_remaining_secs = None;
    n.stage_deadline = None;
    n.deadline_remaining_secs = None;
    n.phase = StagePhase::Done;
    if revert {
        n.state = RolloutState::Reverting;
        (
            n,
            Transition {
                action: RolloutTransition::RevertStarted,
                detail: reason,
            },
        )
    } else {
        n.state = RolloutState::Aborted;
        n.finished_at = Some(now);
        (
            n,
            Transition {
                action: RolloutTransition::Aborted,
                detail: reason,
            },
        )
    }
}

flotilla_shared::message_error!(
    /// Why an operator's action does not apply to a rollout in its state (answered 409).
    pub ActionRefused
);

/// An operator's action on a rollout: the new progress and the transition to log, or why it
/// does not apply now (409). `stage_failures` is the current stage's failure count (accepted at
/// a resume).
pub fn apply_action(
    p: &Progress,
    action: &RolloutAction,
    actor: &str,
    stage_failures: u32,
    now: DateTime<Utc>,
) -> Result<(Progress, Transition), ActionRefused> {
    apply_action_message(p, action, actor, stage_failures, now).map_err(ActionRefused)
}

fn apply_action_message(
    p: &Progress,
    action: &RolloutAction,
    actor: &str,
    stage_failures: u32,
    now: DateTime<Utc>,
) -> Result<(Progress, Transition), String> {
    if p.state.is_final() {
        return Err(format!(
            "the rollout is {}: no further action applies",
            p.state
        ));
    }
    match action {
        RolloutAction::Pause { reason } => match p.state {
            RolloutState::Running => Ok(pause(
                p,
                reason
                    .clone()
                    .unwrap_or_else(|| format!("paused by {actor}")),
                now,
            )),
            RolloutState::Paused => Err("the rollout is already paused".into()),
            _ => Err(format!("the rollout is {}: it cannot be paused", p.state)),
        },
        RolloutAction::Resume => {
            if p.state != RolloutState::Paused {
                return Err(format!(
                    "the rollout is {}: only a paused rollout can be resumed",
                    p.state
                ));
            }
            let mut n = p.clone();
            n.state = RolloutState::Running;
            n.reason = None;
            n.accepted_failures = stage_failures;
            n.stage_deadline = p.deadline_remaining_secs.map(|s| add_secs(now, s));
            n.deadline_remaining_secs = None;
            if p.phase == StagePhase::Soaking {
                n.soak_ends_at = Some(add_secs(now, p.soak_remaining_secs.unwrap_or(0)));
                n.soak_remaining_secs = None;
            }
            n.updated_at = now;
            let detail = if stage_failures > 0 {
                format!("{stage_failures} failure(s) of the current stage accepted")
            } else {
                String::new()
            };
            Ok((
                n,
                Transition {
                    action: RolloutTransition::Resumed,
                    detail,
                },
            ))
        }
        RolloutAction::Promote => {
            match (p.state, p.phase) {
                (RolloutState::Running, StagePhase::Soaking) => {}
                (RolloutState::Running, _) => {
                    return Err(format!(
                        "stage {} is still dispatching: promote ends a soak, and there is none yet",
                        p.stage + 1
                    ))
                }
                (RolloutState::Paused, _) => {
                    return Err("the rollout is paused: resume it first".into())
                }
                (s, _) => return Err(format!("the rollout is {s}: nothing to promote")),
            }
            let mut n = p.clone();
            n.soak_ends_at = Some(now);
            n.updated_at = now;
            Ok((
                n,
                Transition {
                    action: RolloutTransition::Promoted,
                    detail: format!("soak of stage {} ended early", p.stage + 1),
                },
            ))
        }
        RolloutAction::Abort { revert } => match p.state {
            RolloutState::Running | RolloutState::Paused => Ok(abort(
                p,
                *revert,
                format!(
                    "aborted by {actor}{}",
                    if *revert { " with revert" } else { "" }
                ),
                now,
            )),
            RolloutState::Reverting => Err("the rollout is already reverting".into()),
            s => Err(format!("the rollout is {s}: it cannot be aborted")),
        },
    }
}

/// What a finished `container.update` delivery means for its container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateVerdict {
    Updated {
        old_image: Option<String>,
    },
    Failed {
        reason: String,
    },
    Undelivered,
    /// Name target: the agent has no such container.
    NoSuchContainer,
    /// The agent refused to update a container that is not running (exited, created, dead):
    /// not a target, like a missing container.
    NotRunning {
        reason: String,
    },
}

/// Classifies a final delivery of a `container.update` (state, the result's error, and the
/// report's outcome and old image if any).
pub fn classify_update(
    state: DeliveryState,
    error_code: Option<&str>,
    error_message: Option<&str>,
    outcome: Option<UpdateOutcome>,
    old_image: Option<String>,
) -> UpdateVerdict {
    match (state, outcome) {
        (DeliveryState::Succeeded, Some(UpdateOutcome::Updated) | None) => {
            UpdateVerdict::Updated { old_image }
        }
        (DeliveryState::Undelivered | DeliveryState::Skipped, _) => UpdateVerdict::Undelivered,
        _ if error_code == Some(error_codes::NO_SUCH_CONTAINER) => UpdateVerdict::NoSuchContainer,
        _ if error_code == Some(error_codes::NOT_RUNNING) => UpdateVerdict::NotRunning {
            reason: error_message.unwrap_or_default().to_string(),
        },
        (_, outcome) => {
            let what = outcome
                .map(|o| o.as_str().to_string())
                .or_else(|| error_code.map(str::to_string))
                .unwrap_or_else(|| state.as_str().to_string());
            let reason = match error_message {
                Some(m) if !m.is_empty() => format!("{what}: {m}"),
                _ => what,
            };
            UpdateVerdict::Failed { reason }
        }
    }
}

/// What the soak check knows about one updated member.
#[derive(Clone, Debug)]
pub struct SoakMember {
    pub agent_id: String,
    pub containers: Vec<String>,
    /// When its updates finished.
    pub finished_at: DateTime<Utc>,
}

flotilla_shared::message_error!(
    /// Why an updated member (container or agent) failed its soak (recorded as its reason).
    pub SoakFailed
);

/// The soak verdict of one member: `Err(reason)` when it failed.
///
/// An updated container is a new container, so any restart counts (the baseline is 0, not
/// the first heartbeat's count, which would hide restarts before it). A container missing
/// from a heartbeat whose Docker snapshot has an error says nothing.
///
/// Offline time counts from the latest of its last heartbeat, its update's end and
/// `relay_started_at` (the relay's own start, the value the `agent_unreachable` alert uses):
/// while the relay was down nobody could be heard from, so a restart must not fail every
/// soaking member on its first tick.
pub fn soak_verdict(
    m: &SoakMember,
    connected: bool,
    heartbeat: Option<(&Heartbeat, DateTime<Utc>)>,
    bad_events: &[String],
    offline_threshold: Duration,
    relay_started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), SoakFailed> {
    soak_verdict_message(
        m,
        connected,
        heartbeat,
        bad_events,
        offline_threshold,
        relay_started_at,
        now,
    )
    .map_err(SoakFailed)
}

#[allow(clippy::too_many_arguments)]
fn soak_verdict_message(
    m: &SoakMember,
    connected: bool,
    heartbeat: Option<(&Heartbeat, DateTime<Utc>)>,
    bad_events: &[String],
    offline_threshold: Duration,
    relay_started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if let Some(e) = bad_events.first() {
        return Err(e.clone());
    }
    let fresh = heartbeat.filter(|(_, at)| *at >= m.finished_at);
    if let Some(why) = offline_failure(
        m,
        connected,
        heartbeat,
        offline_threshold,
        relay_started_at,
        now,
    ) {
        return Err(why);
    }
    let Some((hb, _)) = fresh else {
        return Ok(());
    };
    for name in &m.containers {
        let Some(c) = hb.docker.containers.iter().find(|c| &c.name == name) else {
            if hb.docker.error.is_some() {
                continue;
            }
            return Err(format!("container {name} is gone"));
        };
        if c.state != "running" {
            return Err(format!("container {name} is {}", c.state));
        }
        if c.health.as_deref() == Some("unhealthy") {
            return Err(format!("container {name} is unhealthy"));
        }
        if c.oom_killed {
            return Err(format!("container {name} was OOM-killed"));
        }
        if c.restart_count > 0 {
            return Err(format!(
                "container {name} restarted ({} restarts since the update)",
                c.restart_count
            ));
        }
    }
    Ok(())
}

/// Why a member counts as failed for being offline during its soak: not connected for longer
/// than the threshold since the latest of its last heartbeat, its update's end and the relay's
/// start (see [`soak_verdict`]).
fn offline_failure(
    m: &SoakMember,
    connected: bool,
    heartbeat: Option<(&Heartbeat, DateTime<Utc>)>,
    offline_threshold: Duration,
    relay_started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<String> {
    if connected {
        return None;
    }
    let last_seen = heartbeat
        .map(|(_, at)| at)
        .unwrap_or(m.finished_at)
        .max(m.finished_at)
        .max(relay_started_at);
    let gone = (now - last_seen).to_std().unwrap_or_default();
    (gone > offline_threshold).then(|| {
        format!(
            "agent offline for {}s during the soak (threshold {}s)",
            gone.as_secs(),
            offline_threshold.as_secs()
        )
    })
}

/// The soak verdict of one member of an agent rollout: it fails when the agent is offline
/// beyond the threshold (as in [`soak_verdict`]), or, while connected, reports a version other
/// than `target` (its updater reverted it after the upgrade succeeded, or somebody installed
/// another build). The version is the one of a heartbeat sent after the upgrade finished, else
/// the one the agent announced when its live connection authenticated (`reported`, from the
/// hub: the stored column can be overwritten by a late flush of the previous process's
/// heartbeat).
#[allow(clippy::too_many_arguments)]
pub fn agent_soak_verdict(
    m: &SoakMember,
    target: &str,
    connected: bool,
    reported: Option<&str>,
    heartbeat: Option<(&Heartbeat, DateTime<Utc>)>,
    offline_threshold: Duration,
    relay_started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), SoakFailed> {
    agent_soak_verdict_message(
        m,
        target,
        connected,
        reported,
        heartbeat,
        offline_threshold,
        relay_started_at,
        now,
    )
    .map_err(SoakFailed)
}

#[allow(clippy::too_many_arguments)]
fn agent_soak_verdict_message(
    m: &SoakMember,
    target: &str,
    connected: bool,
    reported: Option<&str>,
    heartbeat: Option<(&Heartbeat, DateTime<Utc>)>,
    offline_threshold: Duration,
    relay_started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if let Some(why) = offline_failure(
        m,
        connected,
        heartbeat,
        offline_threshold,
        relay_started_at,
        now,
    ) {
        return Err(why);
    }
    if !connected {
        return Ok(());
    }
    let fresh = heartbeat
        .filter(|(_, at)| *at >= m.finished_at)
        .map(|(hb, _)| hb.agent_version.as_str());
    match fresh.or(reported) {
        Some(v) if !compare_versions(v, target).is_eq() => Err(format!(
            "the agent reports version {v}, not {target} (its updater may have reverted the \
             upgrade)"
        )),
        _ => Ok(()),
    }
}

/// When reverts to offline agents give up: the rollout entered `reverting` at its last
/// progress write (nothing else writes it while reverting) plus the stage timeout.
pub fn revert_deadline(row: &RolloutRow) -> DateTime<Utc> {
    add_secs(row.progress.updated_at, row.spec.stage_timeout_secs)
}

/// One container update to record with its command (dispatch or a label agent's expansion).
#[derive(Clone, Debug)]
pub struct ContainerDispatch {
    /// The container's name on the agent.
    pub name: String,
    /// The image it runs now, as last seen (heartbeat or `container.list`): the revert target
    /// when no report names the old image (an update whose result never came).
    pub old_image: Option<String>,
    /// Its `container.update` command; None for a label target's later containers, which
    /// wait `queued` until the agent's previous container finished (one at a time per agent).
    pub command: Option<NewCommand>,
}

/// The current stage as the engine needs it (from one read).
#[derive(Clone, Debug, Default)]
pub struct StageView {
    /// Members of the stage.
    pub members: usize,
    /// Members of the stage by outcome.
    pub counts: RolloutCounts,
    /// Pending members in order.
    pub pending_agents: Vec<String>,
    pub pending: usize,
    /// Agents of the rollout with an update in flight.
    pub in_flight: usize,
    pub failures: u32,
    /// Members that ended updated, for the soak check.
    pub updated: Vec<SoakMember>,
    /// Failure events stored after a member's update finished, per agent.
    pub bad_events: BTreeMap<String, Vec<String>>,
    /// Agent rollouts: members that ended `no_target` because they already run the version
    /// or a newer one ([`ALREADY_RUNS`]); they count as done.
    pub up_to_date: usize,
}

/// What reverting still has to do.
#[derive(Clone, Debug, Default)]
pub struct RevertPlan {
    /// Members of the rollout (parallelism base).
    pub members: usize,
    /// Containers still `updated`: (agent, name, old image), in position order.
    pub to_revert: Vec<(String, String, Option<String>)>,
    /// Containers being reverted now.
    pub in_flight: usize,
    /// Containers whose first update is still in flight (they may end updated).
    pub updating: usize,
    /// Agents whose revert failed.
    pub failed: usize,
}

/// Filter of the store's rollout list (`Store::rollouts`).
#[derive(Clone, Debug)]
pub struct RolloutFilter {
    /// Only rollouts in this state.
    pub state: Option<RolloutState>,
    /// Only rollouts that are not final (running, paused, reverting).
    pub active_only: bool,
    /// Newest first, at most this many.
    pub limit: u32,
}

impl Default for RolloutFilter {
    fn default() -> Self {
        RolloutFilter {
            state: None,
            active_only: false,
            limit: 1000,
        }
    }
}

/// Why an operator's action was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionRefusal {
    NotFound,
    /// It does not apply to the rollout's current state (the sentence says why).
    InvalidState(ActionRefused),
}

// === member outcomes and views ===

/// Marker reason of a name target's container that does not exist on the agent.
pub const NO_SUCH_CONTAINER: &str = flotilla_shared::command::error_codes::NO_SUCH_CONTAINER;
/// Marker (reason prefix) of a container the agent refused to update because it is not running.
pub const NOT_RUNNING: &str = "not_running";
/// Reason prefix of an updated container whose compose project files were left declaring the
/// old image (a rollout with `allow_drift`): `compose drift: <the agent's words>`.
pub const COMPOSE_DRIFT: &str = "compose drift";

/// An in-flight agent's outcome from its containers' (outcome, reason), or None while any is
/// still in flight.
pub fn agent_outcome(
    current: &str,
    containers: &[(String, Option<String>)],
) -> Option<(AgentOutcome, Option<String>)> {
    let has = |o: ContainerOutcome| containers.iter().any(|(c, _)| c == o.as_str());
    let reason_of = |o: ContainerOutcome| {
        containers
            .iter()
            .find(|(c, _)| c == o.as_str())
            .and_then(|(_, r)| r.clone())
    };
    if has(ContainerOutcome::Updating)
        || has(ContainerOutcome::Reverting)
        || has(ContainerOutcome::Queued)
    {
        return None;
    }
    if current == AgentOutcome::Reverting.as_str() || current == AgentOutcome::RevertFailed.as_str()
    {
        if has(ContainerOutcome::Updated) {
            return None;
        }
        if has(ContainerOutcome::RevertFailed) {
            return Some((
                AgentOutcome::RevertFailed,
                reason_of(ContainerOutcome::RevertFailed).map(|r| format!("revert: {r}")),
            ));
        }
        return Some((AgentOutcome::Reverted, None));
    }
    if has(ContainerOutcome::Failed) {
        return Some((AgentOutcome::Failed, reason_of(ContainerOutcome::Failed)));
    }
    if has(ContainerOutcome::Updated) {
        return Some((AgentOutcome::Updated, None));
    }
    let not_running = |r: &Option<String>| {
        r.as_deref()
            .is_some_and(|r| r.starts_with(&format!("{NOT_RUNNING}: ")))
    };
    if containers
        .iter()
        .all(|(_, r)| r.as_deref() == Some(NO_SUCH_CONTAINER) || not_running(r))
    {
        let reason = if containers.iter().any(|(_, r)| not_running(r)) {
            "no running target container (the agent refused to update a stopped one)"
        } else {
            "the agent has no such container"
        };
        return Some((AgentOutcome::NoTarget, Some(reason.into())));
    }
    Some((AgentOutcome::Undelivered, None))
}

/// The API's view of a rollout row (members and events are filled in by the caller).
pub fn info_of(row: RolloutRow, counts: RolloutCounts, stage_failures: u32) -> RolloutInfo {
    let spec = row.spec;
    let p = row.progress;
    let partial = !matches!(
        spec.stages.last().map(|s| &s.what),
        Some(StageWhat::Percent(100))
    );
    RolloutInfo {
        id: row.id,
        name: spec.name,
        selector: spec.selector,
        target: spec.target,
        image: spec.image,
        stages: spec.stages,
        order: spec.order,
        max_failures: spec.max_failures,
        on_failure: spec.on_failure,
        parallelism: spec.parallelism,
        health: spec.health,
        health_timeout_secs: spec.health_timeout_secs,
        stable_secs: spec.stable_secs,
        strategy: spec.strategy,
        stage_timeout_secs: spec.stage_timeout_secs,
        allow_drift: spec.allow_drift,
        state: p.state,
        reason: p.reason,
        stage: p.stage,
        stage_phase: p.phase,
        stage_started_at: p.stage_started_at,
        stage_deadline: p.stage_deadline,
        soak_ends_at: p.soak_ends_at,
        soak_remaining_secs: p.soak_remaining_secs,
        accepted_failures: p.accepted_failures,
        stage_failures,
        partial,
        counts,
        created_at: row.created_at,
        created_by: row.created_by,
        updated_at: p.updated_at,
        finished_at: p.finished_at,
        agents: Vec::new(),
        events: Vec::new(),
    }
}

/// A label target's finished `container.list` (its delivery state and result): the listed
/// containers, or why the member ends without them.
pub fn container_list_verdict(
    state: &str,
    result: Option<CommandResult>,
) -> Result<ContainerListOutput, UpdateVerdict> {
    match (state, result) {
        ("succeeded", Some(r)) => {
            match r
                .output
                .and_then(|o| serde_json::from_value::<ContainerListOutput>(o).ok())
            {
                Some(l) => Ok(l),
                None => Err(UpdateVerdict::Failed {
                    reason: "unreadable container list".into(),
                }),
            }
        }
        ("undelivered" | "skipped", _) => Err(UpdateVerdict::Undelivered),
        (s, r) => Err(UpdateVerdict::Failed {
            reason: r
                .and_then(|r| r.error)
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| s.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests;
