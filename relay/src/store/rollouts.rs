//! Rollout persistence: domain methods of [`Store`] for canary rollouts (SQL in
//! `sql/rollouts.rs`, the engine in `crate::rollouts`). Each method is one transaction.

use super::{now, NewCommand, Sql, Store, StoreError};
use crate::model::rollouts::{
    ActionRefusal, ContainerDispatch, Progress, RevertPlan, RolloutFilter, RolloutRow, RolloutSpec,
    StageView, Transition, UpdateVerdict,
};
use chrono::{DateTime, Utc};
use flotilla_shared::command::ContainerListOutput;
use flotilla_shared::rollout::{AgentOutcome, RolloutAction, RolloutInfo};

impl Store {
    /// Creates a rollout unless an active rollout with the same target has an overlapping
    /// selector: then `Ok(Err((id, name)))` names it and nothing is written.
    pub async fn create_rollout(
        &self,
        id: String,
        spec: RolloutSpec,
        created_by: String,
    ) -> Result<Result<(), (String, String)>, StoreError> {
        self.write(move |c| {
            Ok(
                match Sql::create_rollout(c, &id, &spec, &created_by, now())? {
                    Some(conflict) => Err(conflict),
                    None => Ok(()),
                },
            )
        })
        .await
    }

    /// Ids of the rollouts that are not final, oldest first.
    pub async fn active_rollouts(&self) -> Result<Vec<String>, StoreError> {
        self.read(Sql::active_rollouts).await
    }

    /// Rollout summaries (state, reason, target, selector, counts; no members, no events),
    /// newest first. Cheap enough for the alerts engine to call every evaluation.
    pub async fn rollouts(&self, filter: RolloutFilter) -> Result<Vec<RolloutInfo>, StoreError> {
        self.read(move |c| {
            Sql::rollout_infos(c, None, filter.state, filter.active_only, filter.limit)
        })
        .await
    }

    /// One rollout with its members and event log.
    pub async fn rollout(&self, id: String) -> Result<Option<RolloutInfo>, StoreError> {
        self.read(move |c| {
            Ok(Sql::rollout_infos(c, Some(&id), None, false, 1)?
                .into_iter()
                .next())
        })
        .await
    }

    /// An operator's action (pause, resume, promote, abort), recorded in the event log.
    pub async fn rollout_action(
        &self,
        id: String,
        action: RolloutAction,
        actor: String,
    ) -> Result<Result<(), ActionRefusal>, StoreError> {
        self.write(move |c| {
            Ok(match Sql::rollout_action(c, &id, &action, &actor, now())? {
                None => Err(ActionRefusal::NotFound),
                Some(Err(why)) => Err(ActionRefusal::InvalidState(why)),
                Some(Ok(())) => Ok(()),
            })
        })
        .await
    }

    // === engine steps ===

    /// The engine's view of one rollout.
    pub async fn rollout_row(&self, id: String) -> Result<Option<RolloutRow>, StoreError> {
        self.read(move |c| Sql::rollout_row(c, &id)).await
    }

    /// Outcomes of in-flight containers and agents from their deliveries; returns label
    /// agents whose `container.list` finished (to expand into updates).
    #[allow(clippy::type_complexity)]
    pub async fn refresh_rollout(
        &self,
        id: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<(String, Result<ContainerListOutput, UpdateVerdict>)>, StoreError> {
        // A cheap read first: a rollout with nothing in flight and no changed delivery (a
        // paused or soaking one) costs no write transaction on each engine tick.
        let check = id.clone();
        if !self
            .read(move |c| Sql::rollout_needs_refresh(c, &check))
            .await?
        {
            return Ok(Vec::new());
        }
        self.write(move |c| Sql::refresh_rollout(c, &id, at)).await
    }

    /// Ends an `updating` member with this outcome (its container list failed or was empty).
    pub async fn set_agent_outcome(
        &self,
        id: String,
        agent_id: String,
        outcome: AgentOutcome,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            Sql::set_rollout_agent_outcome(c, &id, &agent_id, outcome, reason.as_deref(), now())
        })
        .await
    }

    /// Ends a pending member without dispatching (see `Db::end_pending_rollout_agent`): only
    /// while the rollout runs and dispatches at `stage`. False when nothing was written.
    pub async fn end_pending_rollout_agent(
        &self,
        id: String,
        agent_id: String,
        stage: usize,
        outcome: AgentOutcome,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            Sql::end_pending_rollout_agent(c, &id, &agent_id, stage, outcome, &reason, now())
        })
        .await
    }

    /// The agent's first unfinished container or backup command that changes something
    /// (`"<kind> <command id>"`), which an agent upgrade must wait for; None when it is free.
    pub async fn agent_busy(&self, agent_id: String) -> Result<Option<String>, StoreError> {
        self.read(move |c| Sql::agent_busy(c, &agent_id)).await
    }

    /// Records a label agent's container updates with their commands (once).
    pub async fn expand_rollout_agent(
        &self,
        id: String,
        agent_id: String,
        updates: Vec<ContainerDispatch>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| Sql::expand_rollout_agent(c, &id, &agent_id, &updates))
            .await
    }

    /// pending → updating for one member with its commands, in one transaction (false when it
    /// was not pending, or the rollout is no longer running and dispatching at its stage:
    /// nothing is written and nothing must be sent). An `agent.upgrade` is also not written
    /// (false) when its build is marked broken by then (the member ends `skipped`) or the agent
    /// has unfinished container or backup work (it stays pending, see [`Store::agent_busy`]).
    pub async fn dispatch_rollout_agent(
        &self,
        id: String,
        agent_id: String,
        list: Option<NewCommand>,
        updates: Vec<ContainerDispatch>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            Sql::dispatch_rollout_agent(c, &id, &agent_id, list.as_ref(), &updates, now())
        })
        .await
    }

    /// Label agents' next queued container (agent, name): agents still updating whose
    /// previous container finished without failing, while the rollout runs.
    pub async fn next_rollout_containers(
        &self,
        id: String,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |c| Sql::next_rollout_containers(c, &id))
            .await
    }

    /// queued → updating for one container with its command (same transaction); false when
    /// it is not queued, its agent has another update in flight, or the rollout is not running.
    pub async fn dispatch_rollout_container(
        &self,
        id: String,
        agent_id: String,
        name: String,
        command: NewCommand,
    ) -> Result<bool, StoreError> {
        self.write(move |c| Sql::dispatch_rollout_container(c, &id, &agent_id, &name, &command))
            .await
    }

    /// Chooses the current stage's members (once); returns how many.
    pub async fn start_rollout_stage(
        &self,
        id: String,
        expected: Progress,
        at: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.write(move |c| Sql::start_rollout_stage(c, &id, &expected, at))
            .await
    }

    /// The current stage as the engine needs it.
    pub async fn rollout_stage(&self, id: String, stage: usize) -> Result<StageView, StoreError> {
        self.read(move |c| Sql::rollout_stage(c, &id, stage)).await
    }

    /// Members that failed their soak (agent, reason).
    pub async fn fail_rollout_members(
        &self,
        id: String,
        failures: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.write(move |c| Sql::fail_rollout_members(c, &id, &failures, now()))
            .await
    }

    /// Writes the rollout's new position if it is still at `expected` (`updated_at`), with
    /// the transition in the event log; false when something else changed it first.
    pub async fn set_rollout_progress(
        &self,
        id: String,
        expected: DateTime<Utc>,
        progress: Progress,
        transition: Transition,
        actor: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            Sql::set_rollout_progress(c, &id, expected, &progress, &transition, &actor)
        })
        .await
    }

    /// The stage's deadline passed: its pending members in `offline` (not connected) end
    /// undelivered, if the rollout is still running at that stage; returns how many.
    pub async fn rollout_stage_deadline(
        &self,
        id: String,
        stage: usize,
        offline: Vec<String>,
    ) -> Result<usize, StoreError> {
        self.write(move |c| Sql::rollout_stage_deadline(c, &id, stage, &offline, now()))
            .await
    }

    /// What reverting still has to do.
    pub async fn rollout_revert_plan(&self, id: String) -> Result<RevertPlan, StoreError> {
        self.read(move |c| Sql::rollout_revert_plan(c, &id)).await
    }

    /// Starts reverting one container with its command (same transaction), or marks its
    /// revert failed with `failure` as the reason (`command` None: old image unknown, agent
    /// offline past the revert deadline). Only while the rollout is reverting.
    pub async fn revert_rollout_container(
        &self,
        id: String,
        agent_id: String,
        name: String,
        command: Option<NewCommand>,
        failure: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            Sql::revert_rollout_container(c, &id, &agent_id, &name, command.as_ref(), &failure)
        })
        .await
    }

    /// Marks one container reverted without sending anything (it already runs what the revert
    /// would go back to), with `reason`; only while the rollout is reverting.
    pub async fn revert_rollout_container_done(
        &self,
        id: String,
        agent_id: String,
        name: String,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            Sql::revert_rollout_container_done(c, &id, &agent_id, &name, &reason, now())
        })
        .await
    }
}
