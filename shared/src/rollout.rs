//! Canary rollouts: the request that starts one, its stages, and the state the relay reports.
//!
//! A rollout updates one container target (a container name, or every container carrying a
//! Docker label `k=v`) to a new image across the agents matching a selector, in stages: each
//! stage dispatches `container.update` to its members with a parallelism limit, waits for the
//! results, then soaks (the updated containers must stay healthy for the stage's soak time).
//! Failures beyond `max_failures` in a stage fire the failure action (pause, abort, revert).
//!
//! A rollout of an agent version ([`CreateAgentRollout`], target [`RolloutTarget::Agent`],
//! the version in `image`) upgrades the agents themselves the same way: each member gets an
//! `agent.upgrade` with the signed manifest of the build for its architecture. A member whose
//! architecture has no build of the version, or that already runs it (or a newer one), ends
//! `no_target`; success is the command succeeding (the new version reached the relay), failure
//! its failing (a reverted upgrade also marks the build broken, and members not yet sent a
//! broken build end `skipped`); the soak holds while the agent stays connected (or not
//! unreachable beyond the `agent_unreachable` threshold) and reports the target version.
//! `revert` sends `agent.upgrade` with `rollback` to each upgraded member's previous version
//! when the relay has that build (else the member ends `revert_failed`, saying so).
//!
//! API (scope read for GET, operate for the rest; every mutation writes an audit row):
//! - `POST /api/v1/rollouts` with [`CreateRollout`] (or [`CreateAgentRollout`], told apart by
//!   its `agent_version` key; 409 with code `no_such_release` / `release_broken` when the
//!   version has no build that is not broken): 201 + [`RolloutInfo`]; 400 for bad
//!   arguments (code `invalid_args` or `bad_request`); 409 (code `conflict`) when an active
//!   rollout (not final, or aborted with updates still in flight) may touch the same
//!   containers: the same target, or a name target against a label target (compared
//!   conservatively), unless the selectors are provably disjoint ([`selectors_disjoint`]);
//!   the message names it. The response is the rollout as stored: the engine, kicked, picks
//!   the first stage's members right after.
//! - `GET /api/v1/rollouts[?state=running|paused|completed|aborted|reverting|reverted|active]`:
//!   `Vec<RolloutInfo>` newest first, without `agents` and `events` (summaries).
//! - `GET /api/v1/rollouts/{id}`: [`RolloutInfo`] with `agents` and `events`.
//! - `POST /api/v1/rollouts/{id}/pause` (body optional [`PauseRollout`]),
//!   `POST /api/v1/rollouts/{id}/resume`, `POST /api/v1/rollouts/{id}/promote` (body optional,
//!   `{}`), `POST /api/v1/rollouts/{id}/abort` (body optional [`AbortRollout`]): 200 +
//!   [`RolloutInfo`]; 409 (code `invalid_state`) when the action does not apply now, with a
//!   message saying why; 404 for an unknown id.
//!
//! Stages are written `<what>[:<soak>]` where what is `N%` (1..=100) or a selector, and soak a
//! duration (`48h`, see [`crate::duration`]; at most 30 days); stages are separated by `,` unless the string
//! contains `;` (then by `;`, so a selector stage may hold several terms).

use crate::duration::{format_duration, parse_duration};
use crate::limit::Limit;
use crate::selector::{Selector, Term};
use crate::update::{HealthSpec, UpdateStrategy};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

mod state;
pub use state::{AgentOutcome, ContainerOutcome, RolloutState, RolloutTransition, StagePhase};

/// Base path of the rollout API.
pub const ROLLOUTS_PATH: &str = "/api/v1/rollouts";

/// Default stages when the request has a staging selector: it comes first for 48 h.
pub const DEFAULT_STAGES: &str = "5%:24h,25%:12h,100%";
/// Soak of the staging stage the defaults put first when `staging` is given.
pub const DEFAULT_STAGING_SOAK_SECS: u64 = 48 * 3600;
/// Longest soak a stage may have (30 days): longer is surely a typo, and keeps every deadline
/// far from overflowing.
pub const MAX_SOAK_SECS: u64 = 30 * 24 * 3600;
/// How long a stage waits for offline members before they end `undelivered` (default).
pub const DEFAULT_STAGE_TIMEOUT_SECS: u64 = 3600;

// === request ===

/// `POST /api/v1/rollouts` (operate). Exactly one of `container` / `container_label`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// A name for people (default: `<target> → <image>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The fleet: agents matching it (percentages count them).
    pub selector: Selector,
    /// Target the container with this name on each agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Target every container carrying this Docker label (`k=v`) on each agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_label: Option<String>,
    /// The new image reference.
    pub image: String,
    /// The stages string (default: `staging:48h` when `staging` is given, then
    /// [`DEFAULT_STAGES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    /// The staging selector the default stages start with (ignored when `stages` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<RolloutOrder>,
    /// Failures a stage tolerates (default 0: the first failure fires the action). A
    /// percentage of the stage's members rounds DOWN (10% of a one-agent canary tolerates 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailureAction>,
    /// Most agents with an update in flight at once (default 1). Parallelism counts agents:
    /// an agent with several target containers (a label target) updates them one at a time,
    /// the next after the previous finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Limit>,
    /// The updates' health check (default auto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<UpdateStrategy>,
    /// How long a stage waits for offline members (default [`DEFAULT_STAGE_TIMEOUT_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_timeout_secs: Option<u64>,
    // --- compose (issue 17, part 1) ---
    /// Update compose containers even where the agent may not edit their project's files
    /// (outside its `[compose] allowed_dirs`): each such container is updated alone and its
    /// update reports the drift (the member's reason says `compose drift: ...`). Without it
    /// such an update is refused and the member fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_drift: bool,
}

impl CreateRollout {
    /// The container target named by `container` / `container_label`.
    pub fn target(&self) -> Result<RolloutTarget, RolloutError> {
        match (&self.container, &self.container_label) {
            (Some(name), None) => RolloutTarget::container(name),
            (None, Some(label)) => label.parse(),
            _ => Err(RolloutError::Target(
                "give exactly one of container or container_label".into(),
            )),
        }
    }

    /// The stages, defaults applied.
    pub fn stage_specs(&self) -> Result<Vec<StageSpec>, RolloutError> {
        match &self.stages {
            Some(s) => parse_stages(s),
            None => Ok(default_stages(self.staging.as_ref())),
        }
    }
}

/// `POST /api/v1/rollouts` (operate) for a new agent version: every member agent gets
/// `agent.upgrade` to `agent_version` (the build for its architecture), stage by stage, with the
/// same stages, order, thresholds and failure actions as a container rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateAgentRollout {
    /// A name for people (default: `flotilla-agent → <version>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The fleet: agents matching it (percentages count them).
    pub selector: Selector,
    /// The published agent version to upgrade to (not `latest`: a rollout names one version).
    pub agent_version: String,
    /// The stages string (default: `staging:48h` when `staging` is given, then
    /// [`DEFAULT_STAGES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<RolloutOrder>,
    /// Failures a stage tolerates (default 0), as for [`CreateRollout::max_failures`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailureAction>,
    /// Most agents upgrading at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Limit>,
    /// How long a stage waits for offline members (default [`DEFAULT_STAGE_TIMEOUT_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_timeout_secs: Option<u64>,
}

impl CreateAgentRollout {
    /// The stages, defaults applied.
    pub fn stage_specs(&self) -> Result<Vec<StageSpec>, RolloutError> {
        match &self.stages {
            Some(s) => parse_stages(s),
            None => Ok(default_stages(self.staging.as_ref())),
        }
    }
}

/// The default stages: the staging selector for 48 h when given, then 5 % for 24 h, 25 % for
/// 12 h, 100 %.
pub fn default_stages(staging: Option<&Selector>) -> Vec<StageSpec> {
    let mut stages = Vec::new();
    if let Some(s) = staging {
        stages.push(StageSpec {
            what: StageWhat::Selector(s.clone()),
            soak_secs: DEFAULT_STAGING_SOAK_SECS,
        });
    }
    stages.extend(parse_stages(DEFAULT_STAGES).expect("default stages parse"));
    stages
}

/// `POST /api/v1/rollouts/{id}/pause` body (optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PauseRollout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/rollouts/{id}/abort` body (optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AbortRollout {
    /// Also roll every updated agent back to its previous image.
    #[serde(default)]
    pub revert: bool,
}

/// An operator's action on a rollout (the `{action}` of `POST /api/v1/rollouts/{id}/{action}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum RolloutAction {
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Resume,
    /// End the current soak now.
    Promote,
    Abort {
        #[serde(default)]
        revert: bool,
    },
}

impl RolloutAction {
    /// The path segment and audit verb.
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutAction::Pause { .. } => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Abort { .. } => "abort",
        }
    }
}

// === targets, order, failure action ===

/// Which containers a rollout updates on each agent (or the agent itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutTarget {
    /// The container with this name.
    Container(String),
    /// Every container carrying the Docker label `key=value`.
    Label { key: String, value: String },
    /// The agent binary (`"agent"`): the rollout's `image` is the agent version, and each
    /// member's one target is [`AGENT_TARGET_NAME`].
    Agent,
}

/// The name of an agent rollout's one target per member (in [`RolloutContainer::name`]).
pub const AGENT_TARGET_NAME: &str = "flotilla-agent";

impl RolloutTarget {
    /// A name target, checked.
    pub fn container(name: &str) -> Result<RolloutTarget, RolloutError> {
        let name = name.trim().trim_start_matches('/');
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(RolloutTarget::Container(name.to_string()))
        } else {
            Err(RolloutError::Target(format!(
                "invalid container name {name:?}: use 1-128 letters, digits, _ . -"
            )))
        }
    }

    /// `k=v` for a label target.
    pub fn label_filter(&self) -> Option<String> {
        match self {
            RolloutTarget::Container(_) | RolloutTarget::Agent => None,
            RolloutTarget::Label { key, value } => Some(format!("{key}={value}")),
        }
    }
}

/// Parses `k=v` as a label target.
impl FromStr for RolloutTarget {
    type Err = RolloutError;
    fn from_str(s: &str) -> Result<Self, RolloutError> {
        let bad = || {
            RolloutError::Target(format!(
                "invalid container label {s:?}: expected key=value (e.g. \
                 com.docker.compose.service=ghost)"
            ))
        };
        let (k, v) = s.split_once('=').ok_or_else(bad)?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_whitespace() || c == '=') {
            return Err(bad());
        }
        if v.len() > 1024 || v.chars().any(|c| c.is_control()) {
            return Err(bad());
        }
        Ok(RolloutTarget::Label {
            key: k.to_string(),
            value: v.to_string(),
        })
    }
}

impl fmt::Display for RolloutTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutTarget::Container(name) => write!(f, "container {name}"),
            RolloutTarget::Label { key, value } => write!(f, "label {key}={value}"),
            RolloutTarget::Agent => f.write_str(AGENT_TARGET_NAME),
        }
    }
}

/// The order in which a stage picks agents not yet in the rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RolloutOrder {
    /// Most recently enrolled first.
    #[default]
    NewestFirst,
    OldestFirst,
    /// Shuffled with a seed stored in the rollout (a relay restart keeps the order).
    Random,
}

impl RolloutOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutOrder::NewestFirst => "newest-first",
            RolloutOrder::OldestFirst => "oldest-first",
            RolloutOrder::Random => "random",
        }
    }
}

impl FromStr for RolloutOrder {
    type Err = RolloutError;
    fn from_str(s: &str) -> Result<Self, RolloutError> {
        [
            RolloutOrder::NewestFirst,
            RolloutOrder::OldestFirst,
            RolloutOrder::Random,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| {
            RolloutError::Other(format!(
                "invalid order {s:?}: expected newest-first, oldest-first or random"
            ))
        })
    }
}

impl fmt::Display for RolloutOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when a stage's failures exceed max-failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Stop dispatching and soaking; wait for an operator (`resume` or `abort`).
    #[default]
    Pause,
    /// Stop dispatching; pending members become skipped.
    Abort,
    /// Abort, then update every updated container back to its previous image.
    Revert,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Abort => "abort",
            FailureAction::Revert => "revert",
        }
    }
}

impl FromStr for FailureAction {
    type Err = RolloutError;
    fn from_str(s: &str) -> Result<Self, RolloutError> {
        [
            FailureAction::Pause,
            FailureAction::Abort,
            FailureAction::Revert,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| {
            RolloutError::Other(format!(
                "invalid failure action {s:?}: expected pause, abort or revert"
            ))
        })
    }
}

impl fmt::Display for FailureAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === stages ===

/// Who a stage adds to the rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageWhat {
    /// Cumulatively this percentage (1..=100) of the fleet, at least one agent.
    Percent(u8),
    /// The fleet agents matching this selector.
    Selector(Selector),
}

/// One stage: who, and how long its updated containers must stay healthy before the next one.
/// Serialized as its text form (`5%:24h`, `env=staging:48h`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StageSpec {
    pub what: StageWhat,
    pub soak_secs: u64,
}

impl StageSpec {
    pub fn soak(&self) -> Duration {
        Duration::from_secs(self.soak_secs)
    }
}

impl FromStr for StageSpec {
    type Err = RolloutError;
    /// `<what>[:<soak>]`. The soak is after the LAST `:` when that part parses as a duration
    /// (selector values may contain `:`).
    fn from_str(s: &str) -> Result<Self, RolloutError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(RolloutError::Stage {
                stage: s.to_string(),
                why: "empty stage".into(),
            });
        }
        let (what, soak_secs) = match t.rsplit_once(':') {
            Some((what, soak)) => match parse_duration(soak) {
                Ok(d) if d.as_secs() > MAX_SOAK_SECS => {
                    return Err(RolloutError::Stage {
                        stage: t.to_string(),
                        why: format!("soak {} is longer than the 30-day maximum", soak.trim()),
                    })
                }
                Ok(d) => (what.trim(), d.as_secs()),
                Err(e) if what.trim().ends_with('%') => {
                    return Err(RolloutError::Stage {
                        stage: t.to_string(),
                        why: e.to_string(),
                    })
                }
                // Not a duration: part of a selector value (validated below).
                Err(_) => (t, 0),
            },
            None => (t, 0),
        };
        let what = if let Some(p) = what.strip_suffix('%') {
            let p: u8 = p
                .trim()
                .parse()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| RolloutError::Stage {
                    stage: t.to_string(),
                    why: format!("percentage {what:?} must be between 1% and 100%"),
                })?;
            StageWhat::Percent(p)
        } else {
            let sel: Selector = what.parse().map_err(|e| RolloutError::Stage {
                stage: t.to_string(),
                why: format!("{e}"),
            })?;
            if sel.terms().is_empty() {
                return Err(RolloutError::Stage {
                    stage: t.to_string(),
                    why: "a selector stage needs at least one term (use 100% for everyone)".into(),
                });
            }
            StageWhat::Selector(sel)
        };
        Ok(StageSpec { what, soak_secs })
    }
}

impl fmt::Display for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            StageWhat::Percent(p) => write!(f, "{p}%")?,
            StageWhat::Selector(s) => write!(f, "{s}")?,
        }
        if self.soak_secs > 0 {
            write!(f, ":{}", format_duration(self.soak()))?;
        }
        Ok(())
    }
}

impl TryFrom<String> for StageSpec {
    type Error = RolloutError;
    fn try_from(s: String) -> Result<Self, RolloutError> {
        s.parse()
    }
}

impl From<StageSpec> for String {
    fn from(s: StageSpec) -> String {
        s.to_string()
    }
}

/// Parses a stages string (see the module doc). Percentages must not decrease.
pub fn parse_stages(s: &str) -> Result<Vec<StageSpec>, RolloutError> {
    let sep = if s.contains(';') { ';' } else { ',' };
    let stages = s
        .split(sep)
        .map(str::parse::<StageSpec>)
        .collect::<Result<Vec<_>, _>>()?;
    if stages.is_empty() {
        return Err(RolloutError::Other("no stages given".into()));
    }
    let mut last = 0u8;
    for st in &stages {
        if let StageWhat::Percent(p) = st.what {
            if p < last {
                return Err(RolloutError::Stage {
                    stage: st.to_string(),
                    why: format!("percentages must not decrease ({p}% after {last}%)"),
                });
            }
            last = p;
        }
    }
    Ok(stages)
}

/// A stages string that round-trips through [`parse_stages`] (`;` when a selector stage has
/// several terms).
pub fn format_stages(stages: &[StageSpec]) -> String {
    let texts: Vec<String> = stages.iter().map(ToString::to_string).collect();
    let sep = if texts.iter().any(|t| t.contains(',')) {
        ";"
    } else {
        ","
    };
    texts.join(sep)
}

// === overlap ===

/// True when two selectors provably cannot match the same agent: one requires `k=v` and the
/// other `k=w` (v ≠ w), `!k` or `k!=v`, or one requires `k` and the other `!k`.
pub fn selectors_disjoint(a: &Selector, b: &Selector) -> bool {
    fn excludes(x: &Term, y: &Term) -> bool {
        match (x, y) {
            (Term::Eq(k1, v1), Term::Eq(k2, v2)) => k1 == k2 && v1 != v2,
            (Term::Eq(k1, _), Term::NotExists(k2)) => k1 == k2,
            (Term::Eq(k1, v1), Term::NotEq(k2, v2)) => k1 == k2 && v1 == v2,
            (Term::Exists(k1), Term::NotExists(k2)) => k1 == k2,
            _ => false,
        }
    }
    a.terms()
        .iter()
        .any(|x| b.terms().iter().any(|y| excludes(x, y) || excludes(y, x)))
}

/// One target container of one agent (for an agent rollout: the agent itself, named
/// [`AGENT_TARGET_NAME`], with its `agent.upgrade` command and previous version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutContainer {
    pub name: String,
    /// The `container.update` command (empty while `queued`).
    pub command_id: String,
    pub outcome: ContainerOutcome,
    /// The image to go back to (`old_image_digest` of the report if present, else `old_image`);
    /// for an agent rollout, the version the agent ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One agent in a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutAgent {
    pub agent_id: String,
    pub agent_name: String,
    /// Index of the stage it belongs to.
    pub stage: usize,
    /// Its place in the rollout's order.
    pub position: u32,
    pub outcome: AgentOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `container.list` command of a label target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<RolloutContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When its updates finished (the soak of its containers counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// One transition of a rollout, with who and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutEvent {
    pub at: DateTime<Utc>,
    /// The API token's name, or `relay` for the engine's own decisions.
    pub actor: String,
    /// One of [`RolloutTransition`]'s spellings (a string on the wire, so that a reader older
    /// than the relay still reads a log with a transition it does not know).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<usize>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Members of a rollout by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutCounts {
    pub total: u32,
    pub pending: u32,
    pub updating: u32,
    pub updated: u32,
    pub failed: u32,
    pub undelivered: u32,
    pub no_target: u32,
    pub skipped: u32,
    pub reverting: u32,
    pub reverted: u32,
    pub revert_failed: u32,
}

impl RolloutCounts {
    pub fn add(&mut self, outcome: AgentOutcome, n: u32) {
        self.total += n;
        let slot = match outcome {
            AgentOutcome::Pending => &mut self.pending,
            AgentOutcome::Updating => &mut self.updating,
            AgentOutcome::Updated => &mut self.updated,
            AgentOutcome::Failed => &mut self.failed,
            AgentOutcome::Undelivered => &mut self.undelivered,
            AgentOutcome::NoTarget => &mut self.no_target,
            AgentOutcome::Skipped => &mut self.skipped,
            AgentOutcome::Reverting => &mut self.reverting,
            AgentOutcome::Reverted => &mut self.reverted,
            AgentOutcome::RevertFailed => &mut self.revert_failed,
        };
        *slot += n;
    }
}

/// A rollout as the API reports it (`GET /api/v1/rollouts/{id}`; the list leaves `agents`
/// and `events` empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutInfo {
    pub id: String,
    pub name: String,
    pub selector: Selector,
    pub target: RolloutTarget,
    /// The new image (for an agent rollout, the agent version).
    pub image: String,
    pub stages: Vec<StageSpec>,
    pub order: RolloutOrder,
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
    /// The updates may leave compose projects drifted ([`CreateRollout::allow_drift`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_drift: bool,
    pub state: RolloutState,
    /// Why it is paused (or why it stopped, for aborted rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Index of the current stage (the last one once final).
    pub stage: usize,
    pub stage_phase: StagePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_started_at: Option<DateTime<Utc>>,
    /// Offline members of the current stage are undelivered after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_deadline: Option<DateTime<Utc>>,
    /// When the current soak ends (running and soaking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_ends_at: Option<DateTime<Utc>>,
    /// Soak left when paused during a soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_remaining_secs: Option<u64>,
    /// Failures of the current stage accepted at a resume (the threshold counts beyond them).
    pub accepted_failures: u32,
    /// Failures of the current stage.
    pub stage_failures: u32,
    /// True when the last stage is not 100 %: the rollout ends after it with part of the
    /// fleet not updated.
    pub partial: bool,
    pub counts: RolloutCounts,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<RolloutAgent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<RolloutEvent>,
}

// === errors ===

/// Why a rollout request is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("invalid stage {stage:?}: {why}")]
    Stage { stage: String, why: String },
    #[error("{0}")]
    Target(String),
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&[(&str, u64)], &str>) {
        let got = parse_stages(input);
        match expected {
            Ok(want) => {
                let got = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                let got: Vec<(String, u64)> = got
                    .iter()
                    .map(|s| {
                        let what = match &s.what {
                            StageWhat::Percent(p) => format!("{p}%"),
                            StageWhat::Selector(sel) => sel.to_string(),
                        };
                        (what, s.soak_secs)
                    })
                    .collect();
                let want: Vec<(String, u64)> =
                    want.iter().map(|(w, s)| (w.to_string(), *s)).collect();
                assert_eq!(got, want, "{input}");
            }
            Err(fragment) => {
                let e = got.expect_err(input).to_string();
                assert!(e.contains(fragment), "{input}: {e:?} lacks {fragment:?}");
            }
        }
    }

    #[test]
    fn users_default_string() {
        check(
            "env=staging:48h,5%:24h,25%:12h,100%",
            Ok(&[
                ("env=staging", 172_800),
                ("5%", 86_400),
                ("25%", 43_200),
                ("100%", 0),
            ]),
        );
        let defaults = default_stages(Some(&"env=staging".parse().unwrap()));
        assert_eq!(
            format_stages(&defaults),
            "env=staging:2d,5%:1d,25%:12h,100%"
        );
        assert_eq!(default_stages(None).len(), 3);
    }

    #[test]
    fn semicolon_form_allows_multi_term_selectors() {
        check(
            "env=staging,region=eu:48h;5%:24h;100%",
            Ok(&[
                ("env=staging,region=eu", 172_800),
                ("5%", 86_400),
                ("100%", 0),
            ]),
        );
        let stages = parse_stages("env=staging,region=eu:48h;5%:24h;100%").unwrap();
        assert_eq!(parse_stages(&format_stages(&stages)).unwrap(), stages);
        // Selector values may hold ':' when no soak follows.
        check("img=a:b", Ok(&[("img=a:b", 0)]));
        check(
            "10%:90s , 50% , 100%:1m",
            Ok(&[("10%", 90), ("50%", 0), ("100%", 60)]),
        );
    }

    #[test]
    fn errors_name_the_stage() {
        check("5%:24x,100%", Err("invalid stage \"5%:24x\""));
        check("0%", Err("between 1% and 100%"));
        check("101%", Err("between 1% and 100%"));
        check("50%,10%", Err("must not decrease"));
        check("5%,,100%", Err("empty stage"));
        check("=x:1h", Err("invalid stage \"=x:1h\""));
        check("", Err("empty stage"));
        check("*", Err("at least one term"));
        check("5%:31d,100%", Err("longer than the 30-day maximum"));
        check("env=staging:99999999999d", Err("invalid stage"));
        check("5%:30d,100%", Ok(&[("5%", 30 * 86_400), ("100%", 0)]));
    }

    #[test]
    fn stage_spec_serde_as_text() {
        let s: StageSpec = serde_json::from_str("\"25%:12h\"").unwrap();
        assert_eq!(s.what, StageWhat::Percent(25));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"25%:12h\"");
    }

    fn disjoint(a: &str, b: &str) -> bool {
        let (a, b): (Selector, Selector) = (a.parse().unwrap(), b.parse().unwrap());
        let d = selectors_disjoint(&a, &b);
        assert_eq!(d, selectors_disjoint(&b, &a), "symmetric: {a} / {b}");
        d
    }

    #[test]
    fn overlap_rules() {
        assert!(disjoint("env=prod", "env=staging"));
        assert!(disjoint("tier=build,env=prod", "env=staging"));
        assert!(disjoint("env=prod", "!env"));
        assert!(disjoint("env=prod", "env!=prod"));
        assert!(disjoint("gpu", "!gpu"));
        assert!(!disjoint("env=prod", "env!=staging"));
        assert!(!disjoint("env=prod", "tier=build"));
        assert!(!disjoint("*", "env=prod"));
        assert!(!disjoint("gpu", "gpu=yes"));
        assert!(!disjoint("!gpu", "env=prod"));
    }

    #[test]
    fn agent_rollouts_parse_and_name_their_target() {
        let req: CreateAgentRollout = serde_json::from_value(serde_json::json!({
            "selector": "env=prod", "agent_version": "0.2.0", "stages": "10%:1h,100%",
            "on_failure": "revert"
        }))
        .unwrap();
        assert_eq!(req.on_failure, Some(FailureAction::Revert));
        assert_eq!(req.stage_specs().unwrap().len(), 2);
        assert!(
            serde_json::from_value::<CreateAgentRollout>(serde_json::json!({
                "selector": "env=prod", "agent_version": "0.2.0", "image": "x"
            }))
            .is_err()
        );
        assert_eq!(serde_json::to_value(RolloutTarget::Agent).unwrap(), "agent");
        assert_eq!(
            serde_json::from_value::<RolloutTarget>(serde_json::json!("agent")).unwrap(),
            RolloutTarget::Agent
        );
        assert_eq!(RolloutTarget::Agent.to_string(), AGENT_TARGET_NAME);
        assert_eq!(RolloutTarget::Agent.label_filter(), None);
    }

    #[test]
    fn targets() {
        let req = |c: Option<&str>, l: Option<&str>| CreateRollout {
            name: None,
            selector: Selector::all(),
            container: c.map(str::to_string),
            container_label: l.map(str::to_string),
            image: "x".into(),
            stages: None,
            staging: None,
            order: None,
            max_failures: None,
            on_failure: None,
            parallelism: None,
            health: None,
            health_timeout_secs: None,
            stable_secs: None,
            strategy: None,
            stage_timeout_secs: None,
            allow_drift: false,
        };
        assert_eq!(
            req(Some("ghost"), None).target().unwrap(),
            RolloutTarget::Container("ghost".into())
        );
        assert_eq!(
            req(None, Some("com.docker.compose.service=ghost"))
                .target()
                .unwrap(),
            RolloutTarget::Label {
                key: "com.docker.compose.service".into(),
                value: "ghost".into()
            }
        );
        assert!(req(None, None).target().is_err());
        assert!(req(Some("a"), Some("k=v")).target().is_err());
        assert!(req(None, Some("novalue")).target().is_err());
        assert!(req(Some("bad name"), None).target().is_err());
        assert!(req(Some(&"a".repeat(128)), None).target().is_ok());
        assert!(req(Some(&"a".repeat(129)), None).target().is_err());
    }
}
