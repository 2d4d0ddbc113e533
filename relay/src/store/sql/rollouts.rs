//! Rollout tables and statements (canary rollouts, see `crate::rollouts`).
//!
//! `rollouts` holds the fixed spec as JSON plus the mutable position (state, stage, phase,
//! absolute deadlines); `rollout_agents` one row per member (stage, position, outcome,
//! dispatch and finish times); `rollout_containers` one row per target container with its `container.update`
//! command id (written in the same transaction that inserts the command, so a crash can never
//! lead to a second update), its revert command id, the image it ran before (the report's, or
//! the one seen at dispatch) and `delivery_at`, the delivery's `updated_at` when the container
//! was classified: an agent's late result replacing a relay guess (expired `undelivered`,
//! `no_result`) changes it, and the container is classified again; `rollout_events` the
//! transition log. Every engine write that starts work (dispatch, expansion, stage deadline)
//! checks in its own transaction that the rollout is still running at that stage, so an
//! operator's pause or abort is never overtaken.
//! Outcomes of in-flight containers are read from `deliveries` and `updates` by joins on the
//! command ids; only rows still in flight are looked at on each engine step.

use super::{from_json, insert_command, parse_opt_ts, parse_ts, to_json, ts, Sql};
use super::{params, Conn, ConnExt, Optional, Row, SqlResult};
use crate::model::rollouts::{
    agent_outcome, classify_update, container_list_verdict, info_of, order_fleet, select_members,
    ActionRefused, ContainerDispatch, FleetAgent, Progress, RevertPlan, RolloutRow, RolloutSpec,
    SoakMember, StageView, Transition, UpdateVerdict, COMPOSE_DRIFT, NOT_RUNNING,
    NO_SUCH_CONTAINER,
};
use crate::store::{NewCommand, StoreError};
use chrono::{DateTime, Utc};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::{CommandKind, CommandResult, ContainerListOutput};
use flotilla_shared::rollout::{
    selectors_disjoint, AgentOutcome, ContainerOutcome, RolloutAgent, RolloutContainer,
    RolloutCounts, RolloutEvent, RolloutInfo, RolloutState, RolloutTarget, RolloutTransition,
    StagePhase, StageWhat,
};
use flotilla_shared::selector::{Labels, Selector};
use flotilla_shared::update::UpdateOutcome;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Migration 5: rollouts.
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    selector TEXT NOT NULL,
    target TEXT NOT NULL,
    image TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    stage INTEGER NOT NULL DEFAULT 0,
    stage_phase TEXT NOT NULL DEFAULT 'dispatching',
    stage_started_at TEXT,
    stage_deadline TEXT,
    deadline_remaining_secs INTEGER,
    soak_ends_at TEXT,
    soak_remaining_secs INTEGER,
    accepted_failures INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX rollouts_state ON rollouts(state);
CREATE TABLE rollout_agents (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    agent_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    position INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    list_command_id TEXT,
    dispatched_at TEXT,
    finished_at TEXT,
    PRIMARY KEY (rollout_id, agent_id)
);
CREATE INDEX rollout_agents_stage ON rollout_agents(rollout_id, stage, outcome);
CREATE INDEX rollout_agents_outcome ON rollout_agents(rollout_id, outcome);
CREATE TABLE rollout_containers (
    rollout_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    name TEXT NOT NULL,
    command_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    old_image TEXT,
    revert_command_id TEXT,
    reason TEXT,
    delivery_at TEXT,
    PRIMARY KEY (rollout_id, agent_id, name),
    FOREIGN KEY (rollout_id, agent_id) REFERENCES rollout_agents(rollout_id, agent_id)
);
CREATE INDEX rollout_containers_outcome ON rollout_containers(rollout_id, outcome);
CREATE TABLE rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    stage INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, id);
CREATE INDEX events_agent_kind_received ON events(agent_id, kind, received_at);
"#;

// The state machine's guards are spelled from its enums (`as_str`), never written by hand.
const RUNNING: &str = RolloutState::Running.as_str();
const REVERTING: &str = RolloutState::Reverting.as_str();
const ABORTED: &str = RolloutState::Aborted.as_str();
const DISPATCHING: &str = StagePhase::Dispatching.as_str();
const UPDATING: &str = AgentOutcome::Updating.as_str();
const PENDING: &str = AgentOutcome::Pending.as_str();
const AGENT_REVERTING: &str = AgentOutcome::Reverting.as_str();

/// Rollouts that are active for the engine and for conflicts (`rollouts` unaliased): not
/// final, or aborted while a member's update is still in flight.
fn active_where() -> String {
    let finals: Vec<String> = RolloutState::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| format!("'{s}'"))
        .collect();
    format!(
        "(state NOT IN ({}) \
         OR (state = '{ABORTED}' AND EXISTS (SELECT 1 FROM rollout_agents ra \
           WHERE ra.rollout_id = rollouts.id AND ra.outcome IN ('{UPDATING}','{AGENT_REVERTING}'))))",
        finals.join(",")
    )
}

/// Containers (`rc`, with their update's delivery `d` and `updates` row `u`) a revert must
/// cover: updated, or possibly updated without the relay knowing.
const MAYBE_UPDATED: &str = "rc.outcome = 'updated' \
     OR (rc.outcome = 'failed' AND json_extract(d.result, '$.error.code') IN \
         ('no_result','agent_revoked')) \
     OR (rc.outcome = 'undelivered' AND u.phase IS NOT NULL)";
/// Final delivery states.
const FINAL_DELIVERY: &str = "('succeeded','failed','rejected','undelivered','skipped')";

fn corrupt(what: &str, s: &str) -> StoreError {
    StoreError::Corrupt(format!("bad rollout {what} {s:?}"))
}

fn parse_rollout_state(s: &str) -> Result<RolloutState, StoreError> {
    RolloutState::parse(s).ok_or_else(|| corrupt("state", s))
}

fn parse_agent_outcome(s: &str) -> Result<AgentOutcome, StoreError> {
    AgentOutcome::parse(s).ok_or_else(|| corrupt("agent outcome", s))
}

fn log_event(
    tx: &mut dyn Conn,
    rollout_id: &str,
    at: DateTime<Utc>,
    actor: &str,
    action: RolloutTransition,
    stage: Option<usize>,
    detail: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO rollout_events (rollout_id, at, actor, action, stage, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            rollout_id,
            ts(at),
            actor,
            action.as_str(),
            stage.map(|s| s as i64),
            detail
        ],
    )?;
    Ok(())
}

const ROLLOUT_COLUMNS: &str = "id, spec, state, reason, stage, stage_phase, stage_started_at, \
     stage_deadline, deadline_remaining_secs, soak_ends_at, soak_remaining_secs, \
     accepted_failures, created_at, created_by, updated_at, finished_at";

type RawRollout = (
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
    String,
    String,
    String,
    Option<String>,
);

fn read_raw(r: &Row) -> SqlResult<RawRollout> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
        r.get(15)?,
    ))
}

fn into_row(raw: RawRollout) -> Result<RolloutRow, StoreError> {
    let (
        id,
        spec,
        state,
        reason,
        stage,
        phase,
        started,
        deadline,
        deadline_rem,
        soak_ends,
        soak_rem,
        accepted,
        created_at,
        created_by,
        updated_at,
        finished_at,
    ) = raw;
    Ok(RolloutRow {
        spec: from_json("rollout spec", &spec)?,
        progress: Progress {
            state: parse_rollout_state(&state)?,
            reason,
            stage: stage as usize,
            phase: StagePhase::parse(&phase).ok_or_else(|| corrupt("phase", &phase))?,
            stage_started_at: parse_opt_ts(started)?,
            stage_deadline: parse_opt_ts(deadline)?,
            deadline_remaining_secs: deadline_rem.map(|s| s as u64),
            soak_ends_at: parse_opt_ts(soak_ends)?,
            soak_remaining_secs: soak_rem.map(|s| s as u64),
            accepted_failures: accepted as u32,
            updated_at: parse_ts(&updated_at)?,
            finished_at: parse_opt_ts(finished_at)?,
        },
        id,
        created_at: parse_ts(&created_at)?,
        created_by,
    })
}

fn load_row(tx: &mut dyn Conn, id: &str) -> Result<Option<RolloutRow>, StoreError> {
    tx.query_row(
        &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
        [id],
        read_raw,
    )
    .optional()?
    .map(into_row)
    .transpose()
}

fn write_progress(
    tx: &mut dyn Conn,
    id: &str,
    expected: Option<DateTime<Utc>>,
    p: &Progress,
) -> Result<bool, StoreError> {
    // Without an expected version the write is unconditional (`?14` is NULL then, and a
    // parameter only tested for NULL has no type PostgreSQL could infer).
    let guard = if expected.is_some() {
        "updated_at = ?14"
    } else {
        "?14 IS NULL"
    };
    let n = tx.execute(
        &format!(
            "UPDATE rollouts SET state = ?2, reason = ?3, stage = ?4, stage_phase = ?5, \
             stage_started_at = ?6, stage_deadline = ?7, deadline_remaining_secs = ?8, \
             soak_ends_at = ?9, soak_remaining_secs = ?10, accepted_failures = ?11, \
             updated_at = ?12, finished_at = ?13 WHERE id = ?1 AND {guard}"
        ),
        params![
            id,
            p.state.as_str(),
            p.reason,
            p.stage as i64,
            p.phase.as_str(),
            p.stage_started_at.map(ts),
            p.stage_deadline.map(ts),
            p.deadline_remaining_secs.map(|s| s as i64),
            p.soak_ends_at.map(ts),
            p.soak_remaining_secs.map(|s| s as i64),
            p.accepted_failures,
            ts(p.updated_at),
            p.finished_at.map(ts),
            expected.map(ts),
        ],
    )?;
    if n == 1 && matches!(p.state, RolloutState::Aborted | RolloutState::Reverting) {
        tx.execute(
            "UPDATE rollout_agents SET outcome = 'skipped', \
             reason = COALESCE(reason, 'the rollout stopped before its turn') \
             WHERE rollout_id = ?1 AND outcome = 'pending'",
            [id],
        )?;
        tx.execute(
            "UPDATE rollout_containers SET outcome = 'undelivered', \
             reason = 'not updated: the rollout stopped before its turn' \
             WHERE rollout_id = ?1 AND outcome = 'queued'",
            [id],
        )?;
    }
    Ok(n == 1)
}

fn stage_failures(tx: &mut dyn Conn, id: &str, stage: usize) -> Result<u32, StoreError> {
    Ok(tx.query_row(
        "SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 AND stage = ?2 \
         AND outcome = 'failed'",
        params![id, stage as i64],
        |r| r.get::<u32>(0),
    )?)
}

/// Non-revoked agents matching a selector.
fn fleet(tx: &mut dyn Conn, selector: &Selector) -> Result<Vec<FleetAgent>, StoreError> {
    let mut stmt =
        tx.prepare("SELECT id, labels, enrolled_at FROM agents WHERE revoked_at IS NULL")?;
    let rows = stmt.query_map(params![], |r| {
        Ok((
            r.get::<String>(0)?,
            r.get::<String>(1)?,
            r.get::<String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for (id, labels, enrolled_at) in rows {
        let labels: Labels = from_json("labels", &labels)?;
        if selector.matches(&labels) {
            out.push(FleetAgent {
                id,
                labels,
                enrolled_at: parse_ts(&enrolled_at)?,
            });
        }
    }
    Ok(out)
}

/// Whether two targets may name the same container: equal targets, and conservatively a name
/// target and a label target (the named container may carry the label; the relay cannot know
/// without asking every agent). Two different names, or two different labels, do not overlap
/// (two labels could both sit on one container, but that is a deliberate choice of the
/// operator and the agent serialises updates per container anyway).
/// Agent rollouts overlap each other (both would upgrade the same agents), never a container
/// target.
pub(crate) fn targets_may_overlap(a: &RolloutTarget, b: &RolloutTarget) -> bool {
    match (a, b) {
        (RolloutTarget::Agent, RolloutTarget::Agent) => true,
        (RolloutTarget::Agent, _) | (_, RolloutTarget::Agent) => false,
        (RolloutTarget::Container(x), RolloutTarget::Container(y)) => x == y,
        (RolloutTarget::Label { .. }, RolloutTarget::Label { .. }) => a == b,
        _ => true,
    }
}

impl Sql {
    /// Inserts a rollout unless an active one conflicts (same target and overlapping
    /// selectors): then returns the other one's (id, name) and inserts nothing.
    pub(in crate::store) fn create_rollout(
        tx: &mut dyn Conn,
        id: &str,
        spec: &RolloutSpec,
        created_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, String)>, StoreError> {
        let active: Vec<(String, String, String)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT id, name, spec FROM rollouts WHERE {}",
                active_where()
            ))?;

            stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        };
        // The rule: a conflict unless the selectors are provably disjoint, for targets that
        // may share a container (see `targets_may_overlap`).
        for (other_id, other_name, other_spec) in active {
            let other: RolloutSpec = from_json("rollout spec", &other_spec)?;
            if targets_may_overlap(&other.target, &spec.target)
                && !selectors_disjoint(&other.selector, &spec.selector)
            {
                return Ok(Some((other_id, other_name)));
            }
        }
        let p = Progress::new(now);
        tx.execute(
            "INSERT INTO rollouts (id, name, spec, selector, target, image, state, stage, \
             stage_phase, accepted_failures, created_at, created_by, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, 0, ?9, ?10, ?9)",
            params![
                id,
                spec.name,
                to_json(spec),
                spec.selector.to_string(),
                to_json(&spec.target),
                spec.image,
                p.state.as_str(),
                p.phase.as_str(),
                ts(now),
                created_by,
            ],
        )?;
        log_event(
            tx,
            id,
            now,
            created_by,
            RolloutTransition::Created,
            None,
            &format!(
                "{} to {} on {} ({})",
                spec.target,
                spec.image,
                spec.selector,
                flotilla_shared::rollout::format_stages(&spec.stages)
            ),
        )?;
        Ok(None)
    }

    /// Rollouts the engine still looks at: not final, or aborted with work in flight (an
    /// abort without revert leaves running updates whose outcomes must still be recorded).
    pub(in crate::store) fn active_rollouts(tx: &mut dyn Conn) -> Result<Vec<String>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT id FROM rollouts WHERE {} ORDER BY created_at",
            active_where()
        ))?;
        let ids = stmt.query_map(params![], |r| r.get(0))?;
        Ok(ids)
    }

    pub(in crate::store) fn rollout_row(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<Option<RolloutRow>, StoreError> {
        load_row(tx, id)
    }

    /// Gives finished in-flight containers and agents their outcome; returns the label
    /// agents whose `container.list` finished and who need their updates.
    #[allow(clippy::type_complexity)]
    pub(in crate::store) fn refresh_rollout(
        tx: &mut dyn Conn,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Result<ContainerListOutput, UpdateVerdict>)>, StoreError> {
        // Containers whose (update or revert) delivery became final, and final containers
        // whose delivery changed since they were classified (an agent's late result replaced
        // a relay guess: expired undelivered, no_result).
        let finished: Vec<FinishedContainer> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT rc.agent_id, rc.name, rc.outcome, d.state, \
                 json_extract(d.result, '$.error.code'), json_extract(d.result, '$.error.message'), \
                 u.outcome, COALESCE(json_extract(u.report, '$.old_image_digest'), \
                 json_extract(u.report, '$.old_image')), d.updated_at, \
                 json_extract(u.report, '$.compose.drift') \
                 FROM rollout_containers rc \
                 JOIN deliveries d ON d.agent_id = rc.agent_id AND d.command_id = \
                   CASE WHEN rc.outcome IN ('reverting','revert_failed') THEN rc.revert_command_id \
                   ELSE rc.command_id END \
                 LEFT JOIN updates u ON u.command_id = d.command_id AND u.agent_id = d.agent_id \
                 WHERE rc.rollout_id = ?1 AND d.state IN {FINAL_DELIVERY} \
                 AND (rc.outcome IN ('updating','reverting') \
                   OR (rc.outcome IN ('failed','undelivered','revert_failed') \
                       AND d.updated_at IS NOT rc.delivery_at))"
            ))?;

            stmt.query_map([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })?
        };
        // Agents whose final containers were classified again (their outcome is recomputed).
        let mut touched: HashSet<String> = HashSet::new();
        {
            let mut set = tx.prepare(
                "UPDATE rollout_containers SET outcome = ?4, reason = ?5, \
                 old_image = COALESCE(?6, old_image), delivery_at = ?7 \
                 WHERE rollout_id = ?1 AND agent_id = ?2 AND name = ?3",
            )?;
            for (
                agent_id,
                name,
                outcome,
                state,
                code,
                message,
                update_outcome,
                old_image,
                at,
                drift,
            ) in finished
            {
                let state = DeliveryState::parse(&state)
                    .ok_or_else(|| corrupt("delivery state", &state))?;
                let update_outcome: Option<UpdateOutcome> = update_outcome
                    .as_deref()
                    .and_then(|o| serde_json::from_value(serde_json::Value::from(o)).ok());
                let verdict = classify_update(
                    state,
                    code.as_deref(),
                    message.as_deref(),
                    update_outcome,
                    old_image,
                );
                let reverting = outcome == ContainerOutcome::Reverting.as_str()
                    || outcome == ContainerOutcome::RevertFailed.as_str();
                let (new, reason, old) = match (reverting, verdict) {
                    // An update allowed to leave its compose project drifted says so.
                    (false, UpdateVerdict::Updated { old_image }) => (
                        ContainerOutcome::Updated,
                        drift.map(|d| format!("{COMPOSE_DRIFT}: {d}")),
                        old_image,
                    ),
                    (false, UpdateVerdict::Failed { reason }) => {
                        (ContainerOutcome::Failed, Some(reason), None)
                    }
                    (false, UpdateVerdict::Undelivered) => {
                        (ContainerOutcome::Undelivered, None, None)
                    }
                    (false, UpdateVerdict::NoSuchContainer) => (
                        ContainerOutcome::Undelivered,
                        Some(NO_SUCH_CONTAINER.to_string()),
                        None,
                    ),
                    (false, UpdateVerdict::NotRunning { reason }) => (
                        ContainerOutcome::Undelivered,
                        Some(format!("{NOT_RUNNING}: {reason}")),
                        None,
                    ),
                    (true, UpdateVerdict::Updated { .. }) => {
                        (ContainerOutcome::Reverted, None, None)
                    }
                    (true, UpdateVerdict::Failed { reason }) => {
                        (ContainerOutcome::RevertFailed, Some(reason), None)
                    }
                    (true, _) => (
                        ContainerOutcome::RevertFailed,
                        Some("the revert was not delivered".to_string()),
                        None,
                    ),
                };
                if !matches!(outcome.as_str(), "updating" | "reverting") && new.as_str() != outcome
                {
                    touched.insert(agent_id.clone());
                }
                set.execute(params![id, agent_id, name, new.as_str(), reason, old, at])?;
            }
        }
        // Queued containers of an agent whose earlier container failed are not sent.
        tx.execute(
            "UPDATE rollout_containers SET outcome = 'undelivered', \
             reason = 'not updated: an earlier container of the agent failed' \
             WHERE rollout_id = ?1 AND outcome = 'queued' AND EXISTS (SELECT 1 FROM \
             rollout_containers f WHERE f.rollout_id = ?1 AND f.agent_id = \
             rollout_containers.agent_id AND f.outcome = 'failed')",
            [id],
        )?;
        // Agents in flight whose containers are all final, and agents whose final containers
        // changed (a soak failure stays a failure: its containers did not change).
        let rows: Vec<(String, String, i64, String, Option<String>)> = {
            let mut stmt = tx.prepare(
                "SELECT ra.agent_id, ra.outcome, ra.stage, rc.outcome, rc.reason \
                 FROM rollout_agents ra JOIN rollout_containers rc \
                 ON rc.rollout_id = ra.rollout_id AND rc.agent_id = ra.agent_id \
                 WHERE ra.rollout_id = ?1 AND (ra.outcome IN ('updating','reverting') \
                   OR (ra.outcome IN ('failed','undelivered','no_target','revert_failed') \
                       AND COALESCE(ra.reason, '') NOT LIKE 'soak:%' \
                       AND ra.agent_id IN (SELECT value FROM json_each(?2)))) \
                 ORDER BY ra.agent_id, rc.name",
            )?;
            let touched: Vec<&String> = touched.iter().collect();

            stmt.query_map(params![id, to_json(&touched)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
        };
        let mut by_agent: BTreeMap<String, (String, i64, Vec<(String, Option<String>)>)> =
            BTreeMap::new();
        for (agent, outcome, stage, c_outcome, c_reason) in rows {
            by_agent
                .entry(agent)
                .or_insert_with(|| (outcome, stage, Vec::new()))
                .2
                .push((c_outcome, c_reason));
        }
        for (agent, (outcome, stage, containers)) in by_agent {
            let Some((new, reason)) = agent_outcome(&outcome, &containers) else {
                continue;
            };
            if new.as_str() == outcome {
                continue;
            }
            // A member whose updates are over stops its soak clock here.
            let finished = matches!(
                new,
                AgentOutcome::Updated
                    | AgentOutcome::Failed
                    | AgentOutcome::Undelivered
                    | AgentOutcome::NoTarget
            );
            tx.execute(
                "UPDATE rollout_agents SET outcome = ?3, reason = COALESCE(?4, reason), \
                 finished_at = CASE WHEN ?6 THEN ?5 ELSE finished_at END \
                 WHERE rollout_id = ?1 AND agent_id = ?2",
                params![id, agent, new.as_str(), reason, ts(now), finished],
            )?;
            if matches!(new, AgentOutcome::Failed | AgentOutcome::RevertFailed) {
                log_event(
                    tx,
                    id,
                    now,
                    crate::model::rollouts::ENGINE_ACTOR,
                    RolloutTransition::Failure,
                    Some(stage as usize),
                    &format!(
                        "agent {agent} {}: {}",
                        new.as_str(),
                        reason.as_deref().unwrap_or("")
                    ),
                )?;
            }
        }
        // Label targets whose container list finished.
        let lists: Vec<(String, String, Option<String>)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT ra.agent_id, d.state, d.result FROM rollout_agents ra \
                 JOIN deliveries d ON d.command_id = ra.list_command_id AND d.agent_id = ra.agent_id \
                 WHERE ra.rollout_id = ?1 AND ra.outcome = 'updating' \
                 AND ra.list_command_id IS NOT NULL AND d.state IN {FINAL_DELIVERY} \
                 AND NOT EXISTS (SELECT 1 FROM rollout_containers rc \
                   WHERE rc.rollout_id = ra.rollout_id AND rc.agent_id = ra.agent_id)"
            ))?;

            stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        };
        let mut out = Vec::new();
        for (agent, state, result) in lists {
            let result: Option<CommandResult> = result
                .as_deref()
                .map(|r| from_json("result", r))
                .transpose()?;
            let list = container_list_verdict(&state, result);
            if let Ok(l) = &list {
                if l.containers.is_empty() {
                    tx.execute(
                        "UPDATE rollout_agents SET outcome = 'no_target', finished_at = ?3, \
                         reason = 'no container carries the label' \
                         WHERE rollout_id = ?1 AND agent_id = ?2",
                        params![id, agent, ts(now)],
                    )?;
                    continue;
                }
            }
            out.push((agent, list));
        }
        Ok(out)
    }

    /// Whether [`Sql::refresh_rollout`] may have anything to do: a member or container in
    /// flight, or a final container whose delivery changed since it was classified.
    pub(in crate::store) fn rollout_needs_refresh(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<bool, StoreError> {
        Ok(tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM rollout_agents WHERE rollout_id = ?1 \
               AND outcome IN ('updating','reverting')) \
             OR EXISTS (SELECT 1 FROM rollout_containers rc JOIN deliveries d \
               ON d.agent_id = rc.agent_id AND d.command_id = \
                 CASE WHEN rc.outcome = 'revert_failed' THEN rc.revert_command_id \
                 ELSE rc.command_id END \
               WHERE rc.rollout_id = ?1 AND rc.outcome IN ('failed','undelivered','revert_failed') \
               AND d.updated_at IS NOT rc.delivery_at)",
            [id],
            |r| r.get(0),
        )?)
    }

    /// Sets a member's outcome while it is `updating` (a label agent's list ended it).
    pub(in crate::store) fn set_rollout_agent_outcome(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        outcome: AgentOutcome,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE rollout_agents SET outcome = ?3, reason = ?4, finished_at = ?5 \
             WHERE rollout_id = ?1 AND agent_id = ?2 AND outcome = 'updating'",
            params![id, agent_id, outcome.as_str(), reason, ts(now)],
        )?;
        Ok(())
    }

    /// Records a label agent's updates with their commands, once (false when it already has
    /// containers or is no longer updating).
    pub(in crate::store) fn expand_rollout_agent(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        updates: &[ContainerDispatch],
    ) -> Result<bool, StoreError> {
        // Only while the rollout runs (an operator's pause or abort wins).
        let ok: bool = tx.query_row(
            &format!(
                "SELECT outcome = 'updating' AND NOT EXISTS (SELECT 1 FROM rollout_containers rc \
             WHERE rc.rollout_id = ?1 AND rc.agent_id = ?2) \
             AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{RUNNING}') \
             FROM rollout_agents WHERE rollout_id = ?1 AND agent_id = ?2"
            ),
            params![id, agent_id],
            |r| r.get(0),
        )?;
        if !ok {
            return Ok(false);
        }
        insert_containers(tx, id, agent_id, updates)?;
        Ok(true)
    }

    /// pending → updating for one member, inserting its commands and recording their ids in
    /// the same transaction. False (nothing written) when the member was not pending, or the
    /// rollout is no longer running at the member's stage (paused, aborted, moved on). For an
    /// `agent.upgrade`, also false when the build is marked broken (the member ends `skipped`,
    /// logged) or the agent has unfinished mutating work ([`agent_busy`]: it stays pending).
    pub(in crate::store) fn dispatch_rollout_agent(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        list: Option<&NewCommand>,
        updates: &[ContainerDispatch],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        for c in updates.iter().filter_map(|u| u.command.as_ref()) {
            if c.command.kind() != CommandKind::AgentUpgrade {
                continue;
            }
            // Checked here, in the transaction that would insert the upgrade, so a build
            // marked broken after the engine resolved it is never sent (the store's single
            // writer orders this against the mark).
            if let Some(why) = super::releases::broken_upgrade(tx, &c.command)? {
                let n = tx.execute(
                    &format!("UPDATE rollout_agents SET outcome = 'skipped', reason = ?3, finished_at = ?4 \
                     WHERE rollout_id = ?1 AND agent_id = ?2 AND outcome = 'pending' \
                     AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{RUNNING}' \
                       AND r.stage_phase = '{DISPATCHING}' AND r.stage = rollout_agents.stage)"),
                    params![id, agent_id, why, ts(now)],
                )?;
                if n > 0 {
                    let stage: i64 = tx.query_row(
                        "SELECT stage FROM rollout_agents WHERE rollout_id = ?1 AND agent_id = ?2",
                        params![id, agent_id],
                        |r| r.get(0),
                    )?;
                    log_event(
                        tx,
                        id,
                        now,
                        crate::model::rollouts::ENGINE_ACTOR,
                        RolloutTransition::Skipped,
                        Some(stage as usize),
                        &format!("agent {agent_id} not sent the upgrade: {why}"),
                    )?;
                }
                return Ok(false);
            }
            // An agent restarting for its upgrade must not cut short container or backup
            // work it is doing: the member stays pending until that work finished.
            if agent_busy(tx, agent_id)?.is_some() {
                return Ok(false);
            }
        }
        let n = tx.execute(
            &format!(
                "UPDATE rollout_agents SET outcome = 'updating', dispatched_at = ?3, \
             list_command_id = ?4 WHERE rollout_id = ?1 AND agent_id = ?2 AND outcome = 'pending' \
             AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{RUNNING}' \
               AND r.stage_phase = '{DISPATCHING}' AND r.stage = rollout_agents.stage)"
            ),
            params![id, agent_id, ts(now), list.map(|c| c.id.as_str())],
        )?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(c) = list {
            insert_command(tx, c)?;
        }
        insert_containers(tx, id, agent_id, updates)?;
        Ok(true)
    }

    /// Ends a pending member without dispatching anything (an agent rollout's member without
    /// a build for its architecture, already on the version, or whose build is broken), while
    /// the rollout is running and dispatching at the member's stage. `skipped` is logged as an
    /// event. False when nothing was written.
    pub(in crate::store) fn end_pending_rollout_agent(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        stage: usize,
        outcome: AgentOutcome,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            &format!(
                "UPDATE rollout_agents SET outcome = ?4, reason = ?5, finished_at = ?6 \
             WHERE rollout_id = ?1 AND agent_id = ?2 AND stage = ?3 AND outcome = 'pending' \
             AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{RUNNING}' \
               AND r.stage_phase = '{DISPATCHING}' AND r.stage = ?3)"
            ),
            params![
                id,
                agent_id,
                stage as i64,
                outcome.as_str(),
                reason,
                ts(now)
            ],
        )?;
        if n == 0 {
            return Ok(false);
        }
        if outcome == AgentOutcome::Skipped {
            log_event(
                tx,
                id,
                now,
                crate::model::rollouts::ENGINE_ACTOR,
                RolloutTransition::Skipped,
                Some(stage),
                &format!("agent {agent_id} not sent the upgrade: {reason}"),
            )?;
        }
        Ok(true)
    }

    /// See [`agent_busy`].
    pub(in crate::store) fn agent_busy(
        tx: &mut dyn Conn,
        agent_id: &str,
    ) -> Result<Option<String>, StoreError> {
        agent_busy(tx, agent_id)
    }

    /// Label agents' next queued container (see `Store::next_rollout_containers`).
    pub(in crate::store) fn next_rollout_containers(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT rc.agent_id, MIN(rc.name) FROM rollout_containers rc \
             JOIN rollouts r ON r.id = rc.rollout_id AND r.state = '{RUNNING}' \
             WHERE rc.rollout_id = ?1 AND rc.outcome = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM rollout_containers o WHERE o.rollout_id = ?1 \
               AND o.agent_id = rc.agent_id AND o.outcome IN ('updating','failed')) \
             GROUP BY rc.agent_id ORDER BY rc.agent_id"
        ))?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows)
    }

    /// queued → updating for one container with its command, in one transaction.
    pub(in crate::store) fn dispatch_rollout_container(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        name: &str,
        command: &NewCommand,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            &format!(
                "UPDATE rollout_containers SET outcome = 'updating', command_id = ?4 \
             WHERE rollout_id = ?1 AND agent_id = ?2 AND name = ?3 AND outcome = 'queued' \
             AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{RUNNING}') \
             AND NOT EXISTS (SELECT 1 FROM rollout_containers o WHERE o.rollout_id = ?1 \
               AND o.agent_id = ?2 AND o.outcome IN ('updating','failed'))"
            ),
            params![id, agent_id, name, command.id],
        )?;
        if n == 0 {
            return Ok(false);
        }
        insert_command(tx, command)?;
        Ok(true)
    }

    /// Chooses and records the members of the current stage (once: a no-op returning 0 when
    /// the stage already started or the rollout moved on).
    pub(in crate::store) fn start_rollout_stage(
        tx: &mut dyn Conn,
        id: &str,
        expected: &Progress,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let Some(row) = load_row(tx, id)? else {
            return Ok(0);
        };
        if row.progress != *expected || row.progress.stage_started_at.is_some() {
            return Ok(0);
        }
        let stage_index = row.progress.stage;
        let Some(stage) = row.spec.stages.get(stage_index) else {
            return Ok(0);
        };
        let mut fleet = fleet(tx, &row.spec.selector)?;
        order_fleet(&mut fleet, row.spec.order, row.spec.seed);
        let (in_rollout, next_position): (HashSet<String>, i64) = {
            let mut stmt =
                tx.prepare("SELECT agent_id, position FROM rollout_agents WHERE rollout_id = ?1")?;
            let rows = stmt.query_map([id], |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)))?;
            let next = rows.iter().map(|(_, p)| p + 1).max().unwrap_or(0);
            (rows.into_iter().map(|(a, _)| a).collect(), next)
        };
        let members = select_members(stage, &fleet, &in_rollout);
        {
            let mut stmt = tx.prepare(&format!(
                "INSERT INTO rollout_agents (rollout_id, agent_id, stage, position, outcome) \
                 VALUES (?1, ?2, ?3, ?4, '{PENDING}')"
            ))?;
            for (i, agent) in members.iter().enumerate() {
                stmt.execute(params![
                    id,
                    agent,
                    stage_index as i64,
                    next_position + i as i64
                ])?;
            }
        }
        let mut p = row.progress.clone();
        p.stage_started_at = Some(now);
        p.stage_deadline = Some(crate::model::rollouts::add_secs(
            now,
            row.spec.stage_timeout_secs,
        ));
        p.updated_at = now;
        write_progress(tx, id, Some(row.progress.updated_at), &p)?;
        let what = match &stage.what {
            StageWhat::Percent(pc) => format!("{pc}% of {} agent(s)", fleet.len()),
            StageWhat::Selector(s) => format!("agents matching {s}"),
        };
        log_event(
            tx,
            id,
            now,
            crate::model::rollouts::ENGINE_ACTOR,
            RolloutTransition::StageStarted,
            Some(stage_index),
            &format!(
                "stage {} ({stage}): {what}, {} new member(s)",
                stage_index + 1,
                members.len()
            ),
        )?;
        Ok(members.len())
    }

    pub(in crate::store) fn rollout_stage(
        tx: &mut dyn Conn,
        id: &str,
        stage: usize,
    ) -> Result<StageView, StoreError> {
        let stage_i = stage as i64;
        let mut v = StageView {
            members: tx.query_row(
                "SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 AND stage = ?2",
                params![id, stage_i],
                |r| r.get::<i64>(0),
            )? as usize,
            in_flight: tx.query_row(
                "SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 AND outcome = 'updating'",
                [id],
                |r| r.get::<i64>(0),
            )? as usize,
            failures: stage_failures(tx, id, stage)?,
            ..StageView::default()
        };
        {
            let mut stmt = tx.prepare(
                "SELECT outcome, COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 AND stage = ?2 \
                 GROUP BY outcome",
            )?;
            let rows = stmt.query_map(params![id, stage_i], |r| {
                Ok((r.get::<String>(0)?, r.get::<u32>(1)?))
            })?;
            for (outcome, n) in rows {
                v.counts.add(parse_agent_outcome(&outcome)?, n);
            }
        }
        {
            let mut stmt = tx.prepare(
                "SELECT agent_id FROM rollout_agents WHERE rollout_id = ?1 AND stage = ?2 \
                 AND outcome = 'pending' ORDER BY position",
            )?;
            v.pending_agents = stmt.query_map(params![id, stage_i], |r| r.get(0))?;
            v.pending = v.pending_agents.len();
        }
        {
            let mut stmt = tx.prepare(
                "SELECT ra.agent_id, ra.finished_at, rc.name \
                 FROM rollout_agents ra JOIN rollout_containers rc \
                 ON rc.rollout_id = ra.rollout_id AND rc.agent_id = ra.agent_id \
                 WHERE ra.rollout_id = ?1 AND ra.stage = ?2 AND ra.outcome = 'updated' \
                 AND rc.outcome = 'updated' ORDER BY ra.position, rc.name",
            )?;
            let rows = stmt.query_map(params![id, stage_i], |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<Option<String>>(1)?,
                    r.get::<String>(2)?,
                ))
            })?;
            for (agent, finished, name) in rows {
                match v.updated.last_mut() {
                    Some(m) if m.agent_id == agent => m.containers.push(name),
                    _ => v.updated.push(SoakMember {
                        agent_id: agent,
                        containers: vec![name],
                        finished_at: parse_opt_ts(finished)?.unwrap_or_default(),
                    }),
                }
            }
        }
        // Agent rollouts: members that ended without a command because they already run the
        // target version or a newer one (see `crate::model::rollouts::ALREADY_RUNS`).
        v.up_to_date = tx.query_row(
            "SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 AND stage = ?2 \
             AND outcome = 'no_target' AND substr(COALESCE(reason, ''), 1, ?3) = ?4",
            params![
                id,
                stage_i,
                crate::model::rollouts::ALREADY_RUNS.len() as i64,
                crate::model::rollouts::ALREADY_RUNS
            ],
            |r| r.get::<i64>(0),
        )? as usize;
        {
            let mut stmt = tx.prepare(
                "SELECT ra.agent_id, e.kind, json_extract(e.event, '$.message') \
                 FROM rollout_agents ra JOIN rollout_containers rc \
                 ON rc.rollout_id = ra.rollout_id AND rc.agent_id = ra.agent_id \
                 JOIN events e ON e.agent_id = ra.agent_id AND e.received_at > ra.finished_at \
                 WHERE ra.rollout_id = ?1 AND ra.stage = ?2 AND ra.outcome = 'updated' \
                 AND rc.outcome = 'updated' \
                 AND e.kind IN ('container.died','container.oom','container.restart_loop') \
                 AND json_extract(e.event, '$.container_name') = rc.name \
                 AND json_extract(e.event, '$.attributes.updating') IS NULL \
                 ORDER BY e.id",
            )?;
            let rows = stmt.query_map(params![id, stage_i], |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Option<String>>(2)?,
                ))
            })?;
            for (agent, kind, message) in rows {
                v.bad_events
                    .entry(agent)
                    .or_default()
                    .push(format!("{kind}: {}", message.unwrap_or_default()));
            }
        }
        Ok(v)
    }

    /// updated → failed for members that failed their soak (one event each).
    pub(in crate::store) fn fail_rollout_members(
        tx: &mut dyn Conn,
        id: &str,
        failures: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for (agent, reason) in failures {
            let stage: Option<i64> = tx
                .query_row(
                    "UPDATE rollout_agents SET outcome = 'failed', reason = ?3 \
                     WHERE rollout_id = ?1 AND agent_id = ?2 AND outcome = 'updated' \
                     RETURNING stage",
                    params![id, agent, format!("soak: {reason}")],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(stage) = stage {
                log_event(
                    tx,
                    id,
                    now,
                    crate::model::rollouts::ENGINE_ACTOR,
                    RolloutTransition::Failure,
                    Some(stage as usize),
                    &format!("agent {agent} failed its soak: {reason}"),
                )?;
            }
        }
        Ok(())
    }

    /// Writes a new position (only if the rollout is still at `expected.updated_at`) and logs
    /// the transition. False when something else changed it first.
    pub(in crate::store) fn set_rollout_progress(
        tx: &mut dyn Conn,
        id: &str,
        expected: DateTime<Utc>,
        p: &Progress,
        t: &Transition,
        actor: &str,
    ) -> Result<bool, StoreError> {
        // The transition belongs to the stage the rollout was in (a stage's end moves it on).
        let stage: Option<i64> = tx
            .query_row("SELECT stage FROM rollouts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        if !write_progress(tx, id, Some(expected), p)? {
            return Ok(false);
        }
        let stage = stage.map(|s| s as usize).unwrap_or(p.stage);
        log_event(
            tx,
            id,
            p.updated_at,
            actor,
            t.action,
            Some(stage),
            &t.detail,
        )?;
        Ok(true)
    }

    /// An operator's action: `Ok(None)` for an unknown rollout, `Ok(Some(Err(why)))` when it
    /// does not apply now.
    pub(in crate::store) fn rollout_action(
        tx: &mut dyn Conn,
        id: &str,
        action: &flotilla_shared::rollout::RolloutAction,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Result<(), ActionRefused>>, StoreError> {
        let Some(row) = load_row(tx, id)? else {
            return Ok(None);
        };
        let failures = stage_failures(tx, id, row.progress.stage)?;
        let (p, t) =
            match crate::model::rollouts::apply_action(&row.progress, action, actor, failures, now)
            {
                Ok(x) => x,
                Err(why) => return Ok(Some(Err(why))),
            };
        write_progress(tx, id, None, &p)?;
        log_event(tx, id, now, actor, t.action, Some(p.stage), &t.detail)?;
        Ok(Some(Ok(())))
    }

    /// Pending members of a stage past its deadline that are offline (`offline`, checked by
    /// the engine against the hub) end undelivered; connected ones keep being dispatched.
    /// Nothing is written unless the rollout is still running at this stage.
    pub(in crate::store) fn rollout_stage_deadline(
        tx: &mut dyn Conn,
        id: &str,
        stage: usize,
        offline: &[String],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let running: bool = tx
            .query_row(
                &format!(
                    "SELECT state = '{RUNNING}' AND stage = ?2 AND stage_phase = '{DISPATCHING}' \
                 FROM rollouts WHERE id = ?1"
                ),
                params![id, stage as i64],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if !running || offline.is_empty() {
            return Ok(0);
        }
        let n = tx.execute(
            "UPDATE rollout_agents SET outcome = 'undelivered', finished_at = ?3, \
             reason = 'offline until the stage deadline' \
             WHERE rollout_id = ?1 AND stage = ?2 AND outcome = 'pending' \
             AND agent_id IN (SELECT value FROM json_each(?4))",
            params![id, stage as i64, ts(now), to_json(&offline)],
        )?;
        if n == 0 {
            return Ok(0);
        }
        log_event(
            tx,
            id,
            now,
            crate::model::rollouts::ENGINE_ACTOR,
            RolloutTransition::StageDeadline,
            Some(stage),
            &format!("{n} offline member(s) undelivered"),
        )?;
        Ok(n)
    }

    pub(in crate::store) fn rollout_revert_plan(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<RevertPlan, StoreError> {
        let mut count = |sql: &str| -> Result<usize, StoreError> {
            Ok(tx.query_row(sql, [id], |r| r.get::<i64>(0))? as usize)
        };
        let mut plan = RevertPlan {
            members: count("SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1")?,
            in_flight: count(
                "SELECT COUNT(*) FROM rollout_containers WHERE rollout_id = ?1 \
                 AND outcome = 'reverting'",
            )?,
            updating: count(
                "SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 AND outcome = 'updating'",
            )?,
            failed: count(
                "SELECT COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 \
                 AND outcome = 'revert_failed'",
            )?,
            to_revert: Vec::new(),
        };
        // Updated containers, and those whose update may have happened: the agent accepted
        // it but no result came (no_result, agent revoked), or it reported progress before
        // its delivery expired. Reverting one that did not change is harmless (the agent
        // updates to the image it already runs).
        let mut stmt = tx.prepare(&format!(
            "SELECT rc.agent_id, rc.name, rc.old_image FROM rollout_containers rc \
             JOIN rollout_agents ra ON ra.rollout_id = rc.rollout_id AND ra.agent_id = rc.agent_id \
             LEFT JOIN deliveries d ON d.command_id = rc.command_id AND d.agent_id = rc.agent_id \
             LEFT JOIN updates u ON u.command_id = rc.command_id AND u.agent_id = rc.agent_id \
             WHERE rc.rollout_id = ?1 AND ({MAYBE_UPDATED}) ORDER BY ra.position, rc.name"
        ))?;
        plan.to_revert = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(plan)
    }

    /// (possibly) updated → reverting for one container with its revert command (same
    /// transaction), or → revert_failed with `failure` as reason when `command` is None (old
    /// image unknown, agent offline past the revert deadline). Only while reverting.
    pub(in crate::store) fn revert_rollout_container(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        name: &str,
        command: Option<&NewCommand>,
        failure: &str,
    ) -> Result<bool, StoreError> {
        // A rollback to a build marked broken since the engine resolved it is not sent: the
        // container's revert fails with that reason instead.
        let broken = match command {
            Some(c) => super::releases::broken_upgrade(tx, &c.command)?,
            None => None,
        };
        let command = command.filter(|_| broken.is_none());
        let failure = broken.as_deref().unwrap_or(failure);
        let (outcome, agent_outcome, reason) = match command {
            Some(_) => ("reverting", "reverting", None),
            None => ("revert_failed", "revert_failed", Some(failure)),
        };
        let n = tx.execute(
            &format!(
                "UPDATE rollout_containers SET outcome = ?4, revert_command_id = ?5, \
                 reason = COALESCE(?6, reason) \
                 WHERE rollout_id = ?1 AND agent_id = ?2 AND name = ?3 \
                 AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{REVERTING}') \
                 AND EXISTS (SELECT 1 FROM rollout_containers rc \
                   LEFT JOIN deliveries d ON d.command_id = rc.command_id AND d.agent_id = rc.agent_id \
                   LEFT JOIN updates u ON u.command_id = rc.command_id AND u.agent_id = rc.agent_id \
                   WHERE rc.rollout_id = ?1 AND rc.agent_id = ?2 AND rc.name = ?3 \
                   AND ({MAYBE_UPDATED}))"
            ),
            params![
                id,
                agent_id,
                name,
                outcome,
                command.map(|c| c.id.as_str()),
                reason
            ],
        )?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(c) = command {
            insert_command(tx, c)?;
        }
        tx.execute(
            "UPDATE rollout_agents SET outcome = ?3 WHERE rollout_id = ?1 AND agent_id = ?2 \
             AND outcome <> 'revert_failed'",
            params![id, agent_id, agent_outcome],
        )?;
        // Nothing to send when the command was dropped for a broken build.
        Ok(broken.is_none())
    }

    /// (possibly) updated → reverted for one container without any command: it already runs
    /// what the revert would go back to (an agent rollout's member whose updater reverted it
    /// already). Its agent becomes `reverting` until the next refresh settles it (reverted
    /// once none of its containers is left); the event log says so (`already_reverted`). Only
    /// while reverting; false when nothing was written.
    pub(in crate::store) fn revert_rollout_container_done(
        tx: &mut dyn Conn,
        id: &str,
        agent_id: &str,
        name: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            &format!(
                "UPDATE rollout_containers SET outcome = 'reverted', reason = ?4 \
                 WHERE rollout_id = ?1 AND agent_id = ?2 AND name = ?3 \
                 AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = ?1 AND r.state = '{REVERTING}') \
                 AND EXISTS (SELECT 1 FROM rollout_containers rc \
                   LEFT JOIN deliveries d ON d.command_id = rc.command_id AND d.agent_id = rc.agent_id \
                   LEFT JOIN updates u ON u.command_id = rc.command_id AND u.agent_id = rc.agent_id \
                   WHERE rc.rollout_id = ?1 AND rc.agent_id = ?2 AND rc.name = ?3 \
                   AND ({MAYBE_UPDATED}))"
            ),
            params![id, agent_id, name, reason],
        )?;
        if n == 0 {
            return Ok(false);
        }
        let stage: Option<i64> = tx
            .query_row(
                "UPDATE rollout_agents SET outcome = 'reverting' WHERE rollout_id = ?1 \
                 AND agent_id = ?2 AND outcome <> 'revert_failed' RETURNING stage",
                params![id, agent_id],
                |r| r.get(0),
            )
            .optional()?;
        log_event(
            tx,
            id,
            now,
            crate::model::rollouts::ENGINE_ACTOR,
            RolloutTransition::AlreadyReverted,
            stage.map(|s| s as usize),
            &format!("agent {agent_id} {name}: nothing sent, {reason}"),
        )?;
        Ok(true)
    }

    /// Rollouts for the API: one with its members and events, or summaries.
    pub(in crate::store) fn rollout_infos(
        tx: &mut dyn Conn,
        id: Option<&str>,
        state: Option<RolloutState>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<RolloutInfo>, StoreError> {
        let rows: Vec<RawRollout> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE (?1 IS NULL OR id = ?1) \
                 AND (?2 IS NULL OR state = ?2) AND (?3 = 0 OR {}) \
                 ORDER BY created_at DESC, id LIMIT ?4",
                active_where()
            ))?;

            stmt.query_map(
                params![id, state.map(|s| s.as_str()), active_only, limit as i64],
                read_raw,
            )?
        };
        let mut out = Vec::new();
        let counts_sql =
            "SELECT outcome, COUNT(*) FROM rollout_agents WHERE rollout_id = ?1 GROUP BY outcome";
        for raw in rows {
            let row = into_row(raw)?;
            let mut counts = RolloutCounts::default();
            let rows = tx.query_map(counts_sql, [&row.id], |r| {
                Ok((r.get::<String>(0)?, r.get::<u32>(1)?))
            })?;
            for (outcome, n) in rows {
                counts.add(parse_agent_outcome(&outcome)?, n);
            }
            let failures = stage_failures(tx, &row.id, row.progress.stage)?;
            let mut info = info_of(row, counts, failures);
            if id.is_some() {
                info.agents = rollout_agents(tx, &info.id)?;
                info.events = rollout_events(tx, &info.id)?;
            }
            out.push(info);
        }
        Ok(out)
    }
}

/// A container whose delivery is final: agent, name, outcome, delivery state, error code and
/// message, update outcome, old image from the report, the delivery's `updated_at`, and the
/// compose drift the update reported (`allow_drift`).
type FinishedContainer = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

/// Kinds of command that change an agent's containers or data: an agent upgrade (a restart of
/// the agent) waits while one of them is unfinished on that agent.
const BUSY_KINDS: [CommandKind; 6] = [
    CommandKind::ContainerUpdate,
    CommandKind::ContainerStart,
    CommandKind::ContainerStop,
    CommandKind::ContainerRestart,
    CommandKind::BackupRun,
    CommandKind::BackupRestore,
];

/// The first unfinished delivery (queued, sent or received) of a [`BUSY_KINDS`] command to
/// `agent_id`, as `"<kind> <command id>"`; None when the agent is free for an upgrade.
fn agent_busy(tx: &mut dyn Conn, agent_id: &str) -> Result<Option<String>, StoreError> {
    let kinds: Vec<&str> = BUSY_KINDS.iter().map(|k| k.as_str()).collect();
    Ok(tx
        .query_row(
            "SELECT c.kind || ' ' || c.id FROM deliveries d JOIN commands c ON c.id = d.command_id \
             WHERE d.agent_id = ?1 AND d.state IN ('queued','sent','received') \
             AND c.kind IN (SELECT value FROM json_each(?2)) ORDER BY c.created_at LIMIT 1",
            params![agent_id, to_json(&kinds)],
            |r| r.get(0),
        )
        .optional()?)
}

fn insert_containers(
    tx: &mut dyn Conn,
    id: &str,
    agent_id: &str,
    updates: &[ContainerDispatch],
) -> Result<(), StoreError> {
    for u in updates {
        if let Some(c) = &u.command {
            insert_command(tx, c)?;
        }
        tx.execute(
            "INSERT INTO rollout_containers (rollout_id, agent_id, name, command_id, outcome, \
             old_image) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                agent_id,
                u.name,
                u.command.as_ref().map(|c| c.id.as_str()).unwrap_or(""),
                if u.command.is_some() {
                    "updating"
                } else {
                    "queued"
                },
                u.old_image
            ],
        )?;
    }
    Ok(())
}

fn rollout_agents(tx: &mut dyn Conn, id: &str) -> Result<Vec<RolloutAgent>, StoreError> {
    type AgentRaw = (
        String,
        Option<String>,
        i64,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let agents: Vec<AgentRaw> = {
        let mut stmt = tx.prepare(
            "SELECT ra.agent_id, a.name, ra.stage, ra.position, ra.outcome, ra.reason, \
             ra.list_command_id, ra.dispatched_at, ra.finished_at \
             FROM rollout_agents ra LEFT JOIN agents a ON a.id = ra.agent_id \
             WHERE ra.rollout_id = ?1 ORDER BY ra.position",
        )?;

        stmt.query_map([id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })?
    };
    let mut containers: HashMap<String, Vec<RolloutContainer>> = HashMap::new();
    {
        let mut stmt = tx.prepare(
            "SELECT agent_id, name, command_id, outcome, old_image, revert_command_id, reason \
             FROM rollout_containers WHERE rollout_id = ?1 ORDER BY agent_id, name",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<Option<String>>(4)?,
                r.get::<Option<String>>(5)?,
                r.get::<Option<String>>(6)?,
            ))
        })?;
        for (agent, name, command_id, outcome, old_image, revert_command_id, reason) in rows {
            containers.entry(agent).or_default().push(RolloutContainer {
                name,
                command_id,
                outcome: ContainerOutcome::parse(&outcome)
                    .ok_or_else(|| corrupt("container outcome", &outcome))?,
                old_image,
                revert_command_id,
                reason,
            });
        }
    }
    agents
        .into_iter()
        .map(
            |(agent_id, name, stage, position, outcome, reason, list, dispatched, finished)| {
                Ok(RolloutAgent {
                    containers: containers.remove(&agent_id).unwrap_or_default(),
                    agent_name: name.unwrap_or_else(|| agent_id.clone()),
                    agent_id,
                    stage: stage as usize,
                    position: position as u32,
                    outcome: parse_agent_outcome(&outcome)?,
                    reason,
                    list_command_id: list,
                    dispatched_at: parse_opt_ts(dispatched)?,
                    finished_at: parse_opt_ts(finished)?,
                })
            },
        )
        .collect()
}

fn rollout_events(tx: &mut dyn Conn, id: &str) -> Result<Vec<RolloutEvent>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT at, actor, action, stage, detail FROM rollout_events WHERE rollout_id = ?1 \
         ORDER BY id",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<String>(0)?,
            r.get::<String>(1)?,
            r.get::<String>(2)?,
            r.get::<Option<i64>>(3)?,
            r.get::<String>(4)?,
        ))
    })?;
    rows.into_iter()
        .map(|(at, actor, action, stage, detail)| {
            Ok(RolloutEvent {
                at: parse_ts(&at)?,
                actor,
                action,
                stage: stage.map(|s| s as usize),
                detail,
            })
        })
        .collect()
}
