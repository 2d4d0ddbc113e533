//! The rollout state machine's vocabulary: where a rollout stands ([`RolloutState`]), what
//! its current stage does ([`StagePhase`]), each member's and container's outcome, and the
//! closed set of transitions the event log records and the API serves
//! ([`RolloutTransition`]). Each type has one `as_str` spelling that the relay's store binds
//! into its SQL and the API serializes, and a `parse` that reads it back.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Waiting for an operator (failure action pause, or `pause`); clocks stopped.
    Paused,
    /// Every stage done.
    Completed,
    /// Stopped; pending members skipped (revert failures, if any, are shown per agent).
    Aborted,
    /// Updating updated containers back to their previous image.
    Reverting,
    /// Every updated container is back on its previous image.
    Reverted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 6] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::Aborted,
        RolloutState::Reverting,
        RolloutState::Reverted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::Reverting => "reverting",
            RolloutState::Reverted => "reverted",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// No further change will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Completed | RolloutState::Aborted | RolloutState::Reverted
        )
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the current stage is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StagePhase {
    /// Sending updates and waiting for their results.
    Dispatching,
    /// Watching the updated containers until the soak ends.
    Soaking,
    /// Finished (the rollout is final or moves on).
    Done,
}

impl StagePhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            StagePhase::Dispatching => "dispatching",
            StagePhase::Soaking => "soaking",
            StagePhase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<StagePhase> {
        [
            StagePhase::Dispatching,
            StagePhase::Soaking,
            StagePhase::Done,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// One agent's outcome in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentOutcome {
    /// A member whose turn has not come (or offline, waiting to connect).
    Pending,
    /// Its container list or updates are in flight.
    Updating,
    /// Every target container updated (and, once the soak passed, stayed healthy).
    Updated,
    /// An update failed, or a container failed during the soak (see `reason`).
    Failed,
    /// Offline until the stage deadline, or its command expired undelivered. Not a failure.
    Undelivered,
    /// The agent has no target container. Neither success nor failure.
    NoTarget,
    /// Never dispatched because the rollout stopped.
    Skipped,
    Reverting,
    Reverted,
    RevertFailed,
}

impl AgentOutcome {
    pub const ALL: [AgentOutcome; 10] = [
        AgentOutcome::Pending,
        AgentOutcome::Updating,
        AgentOutcome::Updated,
        AgentOutcome::Failed,
        AgentOutcome::Undelivered,
        AgentOutcome::NoTarget,
        AgentOutcome::Skipped,
        AgentOutcome::Reverting,
        AgentOutcome::Reverted,
        AgentOutcome::RevertFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AgentOutcome::Pending => "pending",
            AgentOutcome::Updating => "updating",
            AgentOutcome::Updated => "updated",
            AgentOutcome::Failed => "failed",
            AgentOutcome::Undelivered => "undelivered",
            AgentOutcome::NoTarget => "no_target",
            AgentOutcome::Skipped => "skipped",
            AgentOutcome::Reverting => "reverting",
            AgentOutcome::Reverted => "reverted",
            AgentOutcome::RevertFailed => "revert_failed",
        }
    }

    pub fn parse(s: &str) -> Option<AgentOutcome> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for AgentOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container's outcome on one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContainerOutcome {
    /// Waiting for the previous target container of its agent (label targets update one
    /// container at a time per agent); its `command_id` is empty until it is sent.
    Queued,
    Updating,
    Updated,
    Failed,
    Undelivered,
    Reverting,
    Reverted,
    RevertFailed,
}

impl ContainerOutcome {
    pub const ALL: [ContainerOutcome; 8] = [
        ContainerOutcome::Queued,
        ContainerOutcome::Updating,
        ContainerOutcome::Updated,
        ContainerOutcome::Failed,
        ContainerOutcome::Undelivered,
        ContainerOutcome::Reverting,
        ContainerOutcome::Reverted,
        ContainerOutcome::RevertFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ContainerOutcome::Queued => "queued",
            ContainerOutcome::Updating => "updating",
            ContainerOutcome::Updated => "updated",
            ContainerOutcome::Failed => "failed",
            ContainerOutcome::Undelivered => "undelivered",
            ContainerOutcome::Reverting => "reverting",
            ContainerOutcome::Reverted => "reverted",
            ContainerOutcome::RevertFailed => "revert_failed",
        }
    }

    pub fn parse(s: &str) -> Option<ContainerOutcome> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A rollout transition, as the event log records it (`RolloutEvent::action`) and the API
/// serves it. The set is closed: the relay writes nothing
/// else; readers of the API see these spellings ([`RolloutTransition::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutTransition {
    /// The rollout was created.
    Created,
    /// A stage's members were chosen.
    StageStarted,
    /// Every member of the stage finished; the updated ones soak.
    SoakStarted,
    /// The stage passed; the next one starts.
    StageDone,
    /// A member failed (its update, or its soak).
    Failure,
    /// Paused by an operator, by the failure action, or because a stage updated nobody.
    Paused,
    Resumed,
    /// An operator ended the current stage early.
    Promoted,
    Aborted,
    /// The failure action or an operator started reverting updated members.
    RevertStarted,
    /// Every updated member is back on its previous image or version.
    Reverted,
    /// Every stage passed.
    Completed,
    /// Members still offline at the stage deadline ended undelivered.
    StageDeadline,
    /// An agent rollout's member was not sent a build marked broken.
    Skipped,
    /// An agent rollout's member already runs its previous version: no rollback command.
    AlreadyReverted,
}

impl RolloutTransition {
    pub const ALL: [RolloutTransition; 15] = [
        RolloutTransition::Created,
        RolloutTransition::StageStarted,
        RolloutTransition::SoakStarted,
        RolloutTransition::StageDone,
        RolloutTransition::Failure,
        RolloutTransition::Paused,
        RolloutTransition::Resumed,
        RolloutTransition::Promoted,
        RolloutTransition::Aborted,
        RolloutTransition::RevertStarted,
        RolloutTransition::Reverted,
        RolloutTransition::Completed,
        RolloutTransition::StageDeadline,
        RolloutTransition::Skipped,
        RolloutTransition::AlreadyReverted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutTransition::Created => "created",
            RolloutTransition::StageStarted => "stage_started",
            RolloutTransition::SoakStarted => "soak_started",
            RolloutTransition::StageDone => "stage_done",
            RolloutTransition::Failure => "failure",
            RolloutTransition::Paused => "paused",
            RolloutTransition::Resumed => "resumed",
            RolloutTransition::Promoted => "promoted",
            RolloutTransition::Aborted => "aborted",
            RolloutTransition::RevertStarted => "revert_started",
            RolloutTransition::Reverted => "reverted",
            RolloutTransition::Completed => "completed",
            RolloutTransition::StageDeadline => "stage_deadline",
            RolloutTransition::Skipped => "skipped",
            RolloutTransition::AlreadyReverted => "already_reverted",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutTransition> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for RolloutTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RolloutTransition {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_reads_back_and_serializes_the_same() {
        for t in RolloutTransition::ALL {
            assert_eq!(RolloutTransition::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        for s in RolloutState::ALL {
            assert_eq!(RolloutState::parse(s.as_str()), Some(s));
        }
        for o in AgentOutcome::ALL {
            assert_eq!(AgentOutcome::parse(o.as_str()), Some(o));
        }
        for o in ContainerOutcome::ALL {
            assert_eq!(ContainerOutcome::parse(o.as_str()), Some(o));
        }
    }
}
