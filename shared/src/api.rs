//! Dashboard API request and response types (`/api/v1/...`), shared by the relay's handlers, the
//! `flotilla` CLI and the tests. Timestamps are RFC 3339 UTC.

use crate::command::{Command, CommandKind, CommandResult, ErrorInfo};
use crate::heartbeat::{AgentEvent, Heartbeat};
use crate::limit::Limit;
use crate::selector::{Labels, Selector};
use crate::update::{HealthSpec, UpdateOutcome, UpdateReport, UpdateStrategy};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Every API error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// API token scopes; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Operate,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "operate" => Ok(Scope::Operate),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}: expected read, operate or admin"
            )),
        }
    }
}

// === enrollment ===

/// `POST /api/v1/enrollment-tokens` (operate).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    #[serde(default)]
    pub labels: Labels,
    /// Lifetime in seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Number of enrollments allowed (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Label keys an enrolling agent may set beyond the token's own labels (which always win);
    /// `["*"]`: any key. Default: none, so the token alone decides where the agent belongs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_label_keys: Vec<String>,
}

/// In [`CreateEnrollmentToken::agent_label_keys`]: the agent may set any label key (tokens
/// created before the field existed behave so).
pub const ANY_LABEL_KEY: &str = "*";

/// An enrollment token as listed (never the secret itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub created_by: String,
    /// Label keys an enrolling agent may add (`["*"]`: any, as for tokens made before this
    /// setting existed).
    #[serde(default)]
    pub agent_label_keys: Vec<String>,
}

/// Answer to `POST /api/v1/enrollment-tokens`: the only time the secret is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: EnrollmentTokenInfo,
}

/// Facts an agent reports about its host when it enrolls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentFacts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
}

/// `POST /api/v1/enroll` (no bearer token: the enrollment token is the credential).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// Display name (default: the hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The agent's Ed25519 public key, base64.
    pub public_key: String,
    /// Labels the agent asks for. The token's labels always win, and only the keys the token
    /// lets agents add (`agent_label_keys`) are applied; all are recorded as the agent's
    /// claimed labels.
    #[serde(default)]
    pub labels: Labels,
    pub facts: AgentFacts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub agent_id: String,
    pub name: String,
    /// The labels the agent has: the token's, plus the asked-for ones the token allows.
    pub labels: Labels,
    /// Asked-for labels that were not applied (their key is not in the token's
    /// `agent_label_keys`, or the token sets the key itself).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub ignored_labels: Labels,
    /// The relay's Ed25519 public key, base64: the agent pins it.
    pub relay_public_key: String,
    pub relay_key_fingerprint: String,
    pub heartbeat_interval_secs: u64,
}

// === agents ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Offline,
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Revoked => "revoked",
        }
    }
}

/// The few figures shown in fleet lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsSummary {
    pub cpu_percent: f32,
    pub load_1: f64,
    pub memory_used_percent: f32,
    pub disk_max_used_percent: f32,
    pub containers_running: u32,
    pub containers_total: u32,
    pub containers_unhealthy: u32,
}

impl MetricsSummary {
    /// Whether the figures a fleet list shows moved enough to tell watchers: a container
    /// count changed, or CPU, memory or the fullest disk entered another 10-point band. (CPU
    /// differs in nearly every heartbeat; publishing each would flood the live stream.)
    pub fn moved_from(&self, before: &MetricsSummary) -> bool {
        let band = |p: f32| (p / 10.0).floor() as i32;
        (
            self.containers_running,
            self.containers_total,
            self.containers_unhealthy,
        ) != (
            before.containers_running,
            before.containers_total,
            before.containers_unhealthy,
        ) || band(self.cpu_percent) != band(before.cpu_percent)
            || band(self.memory_used_percent) != band(before.memory_used_percent)
            || band(self.disk_max_used_percent) != band(before.disk_max_used_percent)
    }

    pub fn of(hb: &Heartbeat) -> MetricsSummary {
        let c = &hb.docker.containers;
        MetricsSummary {
            cpu_percent: hb.host.cpu_percent,
            load_1: hb.host.load_1,
            memory_used_percent: hb.host.memory_used_percent(),
            disk_max_used_percent: hb.host.disk_max_used_percent(),
            containers_running: c.iter().filter(|c| c.state == "running").count() as u32,
            containers_total: c.len() as u32,
            containers_unhealthy: c
                .iter()
                .filter(|c| c.health.as_deref() == Some("unhealthy"))
                .count() as u32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub status: AgentStatus,
    pub enrolled_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<DateTime<Utc>>,
    pub agent_version: String,
    pub facts: AgentFacts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<MetricsSummary>,
}

/// `GET /api/v1/agents/{id}`: the agent plus its latest heartbeat in full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentInfo,
    /// The labels the agent asked for when it enrolled, whether applied or not (`labels` are
    /// the operator-given ones it has: its token's, allowed claims, and later PATCHes).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub claimed_labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
}

/// `PATCH /api/v1/agents/{id}`: replaces the agent's labels. The agent sees the new labels at its
/// next connection (its welcome is re-signed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PatchAgent {
    pub labels: Labels,
}

/// Response headers of `GET /api/v1/agents`: the opaque cursor of the next page (absent on the
/// last page); `Link: <...>; rel="next"` carries the same as a URL.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// One point of an agent's metrics history: the mean of the heartbeats received in
/// `[at, at + resolution)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsPoint {
    pub at: DateTime<Utc>,
    pub cpu_percent: f32,
    pub memory_used_percent: f32,
    pub disk_max_used_percent: f32,
    /// How many heartbeats the point averages.
    pub samples: u32,
}

/// `GET /api/v1/agents/{id}/metrics?range=24h|30d`: the agent's downsampled history, oldest
/// first (5-minute points over 24 hours, hourly points over 30 days).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsHistory {
    pub agent_id: String,
    /// `24h` or `30d`.
    pub range: String,
    pub resolution_seconds: u32,
    pub points: Vec<MetricsPoint>,
}

// === fleet overview ===

/// Agents by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentCounts {
    /// Enrolled and not revoked.
    pub enrolled: u64,
    pub online: u64,
    pub offline: u64,
    pub revoked: u64,
    /// Agents with an update in progress.
    pub updating: u64,
    /// Agents with an update that rolled back in the last 24 hours.
    pub rolled_back_24h: u64,
}

/// Firing alerts by severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertCounts {
    pub hard: u64,
    pub medium: u64,
    pub soft: u64,
}

/// Databases by the state of their latest backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupCounts {
    pub ok: u64,
    pub failed: u64,
    pub stale: u64,
}

/// A fan-out job still running, with its progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobProgress {
    pub id: String,
    pub kind: CommandKind,
    pub selector: Selector,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub counts: JobCounts,
}

/// `GET /api/v1/fleet/overview`: the dashboard's first page in one answer. Counts are exact;
/// the lists are the newest few (`*_total` says how many there are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetOverview {
    pub at: DateTime<Utc>,
    pub agents: AgentCounts,
    pub alerts_firing: AlertCounts,
    pub backups: BackupCounts,
    /// Rollouts not finished (running or paused).
    pub rollouts: Vec<crate::rollout::RolloutInfo>,
    pub jobs: Vec<JobProgress>,
    pub jobs_total: u64,
    /// Updates in progress, newest first.
    pub updates: Vec<UpdateRecord>,
    pub updates_total: u64,
    /// The newest firing alerts.
    pub newest_alerts: Vec<crate::alert::AlertInfo>,
}

// === commands ===

/// `POST /api/v1/agents/{id}/commands` (operate), `?wait=SECONDS` to wait for the result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateCommand {
    #[serde(flatten)]
    pub command: Command,
    /// How long the relay keeps trying to deliver (default 600 s, at most 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// Where one command stands for one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its turn in a job (max-concurrency).
    Pending,
    /// Persisted; will be sent when the agent is connected.
    Queued,
    /// Written to the agent's socket.
    Sent,
    /// The agent journaled it.
    Received,
    Succeeded,
    Failed,
    Rejected,
    /// Expired before the agent received it.
    Undelivered,
    /// Never dispatched: the job stopped (max-errors reached).
    Skipped,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Queued => "queued",
            DeliveryState::Sent => "sent",
            DeliveryState::Received => "received",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
            DeliveryState::Rejected => "rejected",
            DeliveryState::Undelivered => "undelivered",
            DeliveryState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Queued,
            DeliveryState::Sent,
            DeliveryState::Received,
            DeliveryState::Succeeded,
            DeliveryState::Failed,
            DeliveryState::Rejected,
            DeliveryState::Undelivered,
            DeliveryState::Skipped,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }

    /// No further change will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryState::Succeeded
                | DeliveryState::Failed
                | DeliveryState::Rejected
                | DeliveryState::Undelivered
                | DeliveryState::Skipped
        )
    }

    /// Counts against a job's max-errors.
    pub fn is_error(self) -> bool {
        matches!(self, DeliveryState::Failed | DeliveryState::Rejected)
    }
}

/// A command to one agent (`GET /api/v1/commands/{id}`; for a job's command, `agent_id` picks
/// the agent with `?agent=`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandInfo {
    pub id: String,
    pub agent_id: String,
    pub kind: CommandKind,
    pub command: Command,
    pub state: DeliveryState,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
}

// === jobs (fan-out) ===

/// `POST /api/v1/jobs` (operate): one command to every agent matching the selector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateJob {
    pub selector: Selector,
    #[serde(flatten)]
    pub command: Command,
    /// Most agents working on it at once (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Limit>,
    /// Stop dispatching to new agents once errors exceed this (default: never stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    /// Every target reached a final state.
    Completed,
    /// Errors exceeded max-errors: no new targets were dispatched.
    Stopped,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobCounts {
    pub targets: u32,
    pub pending: u32,
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub rejected: u32,
    pub undelivered: u32,
    pub skipped: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobTarget {
    pub agent_id: String,
    pub agent_name: String,
    pub state: DeliveryState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobInfo {
    pub id: String,
    pub command_id: String,
    pub selector: Selector,
    pub kind: CommandKind,
    pub command: Command,
    pub state: JobState,
    /// Resolved against the number of targets.
    pub max_concurrency: u32,
    pub max_errors: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    pub counts: JobCounts,
    pub targets: Vec<JobTarget>,
}

// === update history ===

/// Layers of an image pull: done of total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullLayers {
    pub done: u32,
    pub total: u32,
}

/// One `container.update` on one agent, as the relay's update history keeps it
/// (`GET /api/v1/agents/{id}/updates`, `GET /api/v1/updates`). Newest first in lists.
///
/// While `active`, `phase` follows the agent's `container.update` progress events. Once the
/// update ended, `finished_at` is set and either `report` (with `outcome`) says how it went, or,
/// when it ended without a report (rejected, undelivered, no result, interrupted, agent revoked),
/// `outcome` and `report` are absent and `state` plus `error` say why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateRecord {
    pub command_id: String,
    pub agent_id: String,
    /// Set when the update was part of a fan-out job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The container as asked for (name or id).
    pub container: String,
    /// The container's name as the agent reported it (progress events, report), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The image reference asked for.
    pub image: String,
    pub health: HealthSpec,
    pub strategy: UpdateStrategy,
    /// The API token's name that asked for it.
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    /// Not finished yet: the agent may be acting on the container.
    pub active: bool,
    /// The delivery's state: queued, sent or received while active; succeeded, failed, rejected
    /// or undelivered once finished.
    pub state: DeliveryState,
    /// The latest update phase (`validated`, `pulling`, ..., `done`; see
    /// `flotilla_shared::update::UpdatePhase`), when the agent reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_at: Option<DateTime<Utc>>,
    /// The image pull's progress, from the agent's pull events (layers whose pull completed, of
    /// the layers the engine named); absent before the pull and when no layer had to come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullLayers>,
    /// How it ended, from the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<UpdateOutcome>,
    /// The result's error (e.g. `update_rolled_back`, `container_busy`, `no_result`,
    /// `interrupted`, `agent_revoked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<UpdateReport>,
    // --- compose (issue 17, part 1) ---
    /// For one container of a `compose.update`: that command's id (this record's
    /// `command_id` is `<group_id>.<service>`, the id the agent journals the container under).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The compose project of a `compose.update` (on its containers' records, and on the one
    /// record of the whole project until the agent's result names the containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    /// The compose service of a `compose.update`'s container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
}

impl UpdateRecord {
    /// What was updated, for people: the container's reported name (else as asked for), with
    /// its compose project and service for a `compose.update`'s container
    /// (`shop-web-1 (compose shop/web)`), or `compose project shop` for the project's record.
    pub fn target_label(&self) -> String {
        let name = self.container_name.as_deref().unwrap_or(&self.container);
        match (&self.compose_project, &self.compose_service) {
            (Some(p), Some(s)) => format!("{name} (compose {p}/{s})"),
            (Some(p), None) => format!("compose project {p}"),
            _ => name.to_string(),
        }
    }
}

// === API tokens ===

/// `POST /api/v1/api-tokens` (admin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    pub name: String,
    pub scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenCreated {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub token: String,
    pub created_at: DateTime<Utc>,
}

/// An API token as listed by `GET /api/v1/api-tokens` (never the secret itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

// === events ===

/// An agent event as stored by the relay (`GET /api/v1/agents/{id}/events`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRecord {
    pub id: i64,
    pub agent_id: String,
    pub received_at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: AgentEvent,
}

/// One row of the relay's audit trail (`GET /api/v1/audit`): who did what, when, and how it
/// ended. Every mutating API call writes one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    pub ts: DateTime<Utc>,
    /// The API token's name (`admin` for the first admin token).
    pub actor: String,
    /// e.g. `command.create`, `job.create`, `agent.revoke`, `enrollment_token.create`.
    pub action: String,
    /// The id acted on.
    pub target: String,
    /// `ok` or `error: <code>`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /healthz`, `GET /readyz`, and what `flotilla-relay` prints about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayStatus {
    pub status: String,
    pub version: String,
    pub relay_key_fingerprint: String,
    pub connected_agents: u64,
}

/// `GET /api/v1/cluster`: the relays sharing this relay's database and who runs each
/// singleton engine. One relay (SQLite) shows itself alone and no leases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// The relay that answered.
    pub relay_id: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Relays seen in the last 15 s (with SQLite: this one).
    pub relays: Vec<ClusterRelay>,
    pub leases: Vec<ClusterLease>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterRelay {
    pub relay_id: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub version: String,
    pub address: String,
}

/// A singleton engine's lease: its holder and epoch (the fencing token its writes carry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterLease {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_move_by_container_counts_and_ten_point_bands() {
        let base = MetricsSummary {
            cpu_percent: 12.0,
            load_1: 0.5,
            memory_used_percent: 45.0,
            disk_max_used_percent: 70.0,
            containers_running: 3,
            containers_total: 4,
            containers_unhealthy: 0,
        };
        let with = |f: fn(&mut MetricsSummary)| {
            let mut s = base.clone();
            f(&mut s);
            s
        };
        assert!(!base.moved_from(&base));
        assert!(!with(|s| s.cpu_percent = 19.9).moved_from(&base));
        assert!(!with(|s| s.load_1 = 3.0).moved_from(&base));
        assert!(with(|s| s.cpu_percent = 20.0).moved_from(&base));
        assert!(with(|s| s.memory_used_percent = 39.0).moved_from(&base));
        assert!(with(|s| s.disk_max_used_percent = 80.5).moved_from(&base));
        assert!(with(|s| s.containers_running = 4).moved_from(&base));
        assert!(with(|s| s.containers_unhealthy = 1).moved_from(&base));
    }

    #[test]
    fn create_command_wire_form() {
        let v = json!({"kind": "container.stop", "args": {"container": "web", "timeout_secs": 2}, "ttl_secs": 30});
        let c: CreateCommand = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.command.kind(), CommandKind::ContainerStop);
        assert_eq!(c.ttl_secs, Some(30));
        assert_eq!(serde_json::to_value(&c).unwrap(), v);
    }

    #[test]
    fn create_job_wire_form() {
        let v = json!({"selector": "tier=build", "kind": "container.list", "args": {"all": true},
                       "max_concurrency": "50%", "max_errors": "1"});
        let j: CreateJob = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(j.max_concurrency, Some(Limit::Percent(50)));
        assert_eq!(serde_json::to_value(&j).unwrap(), v);
        let bad = json!({"selector": "tier=build", "kind": "container.list", "args": {}, "max_errors": "x%"});
        assert!(serde_json::from_value::<CreateJob>(bad).is_err());
    }

    #[test]
    fn update_record_wire_form() {
        // In progress: no outcome, error, finish or report keys at all.
        let v = json!({"command_id": "cmd_1", "agent_id": "ag_1", "container": "web",
                       "image": "reg.example/app:v2", "health": "http:8080/healthz",
                       "strategy": "start-first", "requested_by": "admin",
                       "created_at": "2026-03-01T12:00:00Z", "active": true, "state": "received",
                       "phase": "health_gate", "phase_at": "2026-03-01T12:00:05Z"});
        let r: UpdateRecord = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            r.health,
            HealthSpec::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(r.strategy, UpdateStrategy::StartFirst);
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        // Ended without a report: state and error say how.
        let v = json!({"command_id": "cmd_2", "agent_id": "ag_1", "job_id": "job_1",
                       "container": "web", "image": "app:v2", "health": "auto",
                       "strategy": "stop-first", "requested_by": "admin",
                       "created_at": "2026-03-01T12:00:00Z", "active": false, "state": "failed",
                       "error": {"code": "no_result", "message": "no result in time"},
                       "finished_at": "2026-03-01T12:30:00Z"});
        let r: UpdateRecord = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((r.outcome, r.report.is_none()), (None, true));
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        let mut with_outcome = v;
        with_outcome["outcome"] = json!("rollback_failed");
        let r: UpdateRecord = serde_json::from_value(with_outcome).unwrap();
        assert_eq!(r.outcome, Some(UpdateOutcome::RollbackFailed));
    }
}
