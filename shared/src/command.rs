//! The enumerated command kinds (no free-form shell), their typed arguments and results, and the
//! signed envelope in which the relay sends them.

pub use crate::backup::{BackupListArgs, BackupRestoreArgs, BackupRunArgs, BackupVerifyArgs};
use crate::selector::{Labels, Selector};
use crate::signing::{PublicKey, SigningError, SigningKey, COMMAND_DOMAIN};
pub use crate::update::ContainerUpdateArgs;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default stop timeout when a stop/restart names none (Docker's own default).
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;
/// Default and largest number of log lines a `container.logs` returns.
pub const DEFAULT_LOG_TAIL: u32 = 100;
pub const MAX_LOG_TAIL: u32 = 10_000;

/// Every command kind, in its wire spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CommandKind {
    #[serde(rename = "ping")]
    Ping,
    #[serde(rename = "container.list")]
    ContainerList,
    #[serde(rename = "container.inspect")]
    ContainerInspect,
    #[serde(rename = "container.start")]
    ContainerStart,
    #[serde(rename = "container.stop")]
    ContainerStop,
    #[serde(rename = "container.restart")]
    ContainerRestart,
    #[serde(rename = "container.logs")]
    ContainerLogs,
    #[serde(rename = "container.update")]
    ContainerUpdate,
    #[serde(rename = "backup.list")]
    BackupList,
    #[serde(rename = "backup.run")]
    BackupRun,
    #[serde(rename = "backup.verify")]
    BackupVerify,
    #[serde(rename = "backup.restore")]
    BackupRestore,
    #[serde(rename = "agent.upgrade")]
    AgentUpgrade,
    // --- issue 17 parts 4 and 6: host upkeep ---
    #[serde(rename = "backup.forget")]
    BackupForget,
    #[serde(rename = "image.prune")]
    ImagePrune,
    // --- compose (issue 17, part 1) ---
    #[serde(rename = "compose.update")]
    ComposeUpdate,
}

impl CommandKind {
    pub const ALL: [CommandKind; 16] = [
        CommandKind::Ping,
        CommandKind::ContainerList,
        CommandKind::ContainerInspect,
        CommandKind::ContainerStart,
        CommandKind::ContainerStop,
        CommandKind::ContainerRestart,
        CommandKind::ContainerLogs,
        CommandKind::ContainerUpdate,
        CommandKind::BackupList,
        CommandKind::BackupRun,
        CommandKind::BackupVerify,
        CommandKind::BackupRestore,
        CommandKind::AgentUpgrade,
        // --- issue 17 parts 4 and 6: host upkeep ---
        CommandKind::BackupForget,
        CommandKind::ImagePrune,
        // --- compose (issue 17, part 1) ---
        CommandKind::ComposeUpdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Ping => "ping",
            CommandKind::ContainerList => "container.list",
            CommandKind::ContainerInspect => "container.inspect",
            CommandKind::ContainerStart => "container.start",
            CommandKind::ContainerStop => "container.stop",
            CommandKind::ContainerRestart => "container.restart",
            CommandKind::ContainerLogs => "container.logs",
            CommandKind::ContainerUpdate => "container.update",
            CommandKind::BackupList => "backup.list",
            CommandKind::BackupRun => "backup.run",
            CommandKind::BackupVerify => "backup.verify",
            CommandKind::BackupRestore => "backup.restore",
            CommandKind::AgentUpgrade => "agent.upgrade",
            // --- issue 17 parts 4 and 6: host upkeep ---
            CommandKind::BackupForget => "backup.forget",
            CommandKind::ImagePrune => "image.prune",
            // --- compose (issue 17, part 1) ---
            CommandKind::ComposeUpdate => "compose.update",
        }
    }

    /// Whether the command changes state on the agent's host (at most one mutating command per
    /// container runs at a time).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            CommandKind::ContainerStart
                | CommandKind::ContainerStop
                | CommandKind::ContainerRestart
                | CommandKind::ContainerUpdate
                | CommandKind::BackupRun
                | CommandKind::BackupRestore
                | CommandKind::AgentUpgrade
                | CommandKind::BackupForget
                | CommandKind::ImagePrune
                | CommandKind::ComposeUpdate
        )
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown command kind {0:?}; known kinds: ping, container.list, container.inspect, container.start, container.stop, container.restart, container.logs, container.update, backup.list, backup.run, backup.verify, backup.restore, agent.upgrade, backup.forget, image.prune, compose.update")]
pub struct UnknownKind(pub String);

impl FromStr for CommandKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// A command with its typed arguments: `{"kind": "container.stop", "args": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "args", deny_unknown_fields)]
pub enum Command {
    #[serde(rename = "ping")]
    Ping(#[serde(default)] PingArgs),
    #[serde(rename = "container.list")]
    ContainerList(#[serde(default)] ContainerListArgs),
    #[serde(rename = "container.inspect")]
    ContainerInspect(ContainerRef),
    #[serde(rename = "container.start")]
    ContainerStart(ContainerRef),
    #[serde(rename = "container.stop")]
    ContainerStop(ContainerStopArgs),
    #[serde(rename = "container.restart")]
    ContainerRestart(ContainerStopArgs),
    #[serde(rename = "container.logs")]
    ContainerLogs(ContainerLogsArgs),
    #[serde(rename = "container.update")]
    ContainerUpdate(ContainerUpdateArgs),
    #[serde(rename = "backup.list")]
    BackupList(#[serde(default)] BackupListArgs),
    #[serde(rename = "backup.run")]
    BackupRun(#[serde(default)] BackupRunArgs),
    #[serde(rename = "backup.verify")]
    BackupVerify(BackupVerifyArgs),
    #[serde(rename = "backup.restore")]
    BackupRestore(BackupRestoreArgs),
    #[serde(rename = "agent.upgrade")]
    AgentUpgrade(AgentUpgradeArgs),
    // --- issue 17 parts 4 and 6: host upkeep ---
    #[serde(rename = "backup.forget")]
    BackupForget(crate::upkeep::BackupForgetArgs),
    #[serde(rename = "image.prune")]
    ImagePrune(#[serde(default)] crate::upkeep::ImagePruneArgs),
    // --- compose (issue 17, part 1) ---
    #[serde(rename = "compose.update")]
    ComposeUpdate(crate::compose::ComposeUpdateArgs),
}

message_error!(
    /// A command that cannot be built from its parts or whose arguments are out of range (the
    /// message names the argument).
    pub InvalidCommand
);

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Ping(_) => CommandKind::Ping,
            Command::ContainerList(_) => CommandKind::ContainerList,
            Command::ContainerInspect(_) => CommandKind::ContainerInspect,
            Command::ContainerStart(_) => CommandKind::ContainerStart,
            Command::ContainerStop(_) => CommandKind::ContainerStop,
            Command::ContainerRestart(_) => CommandKind::ContainerRestart,
            Command::ContainerLogs(_) => CommandKind::ContainerLogs,
            Command::ContainerUpdate(_) => CommandKind::ContainerUpdate,
            Command::BackupList(_) => CommandKind::BackupList,
            Command::BackupRun(_) => CommandKind::BackupRun,
            Command::BackupVerify(_) => CommandKind::BackupVerify,
            Command::BackupRestore(_) => CommandKind::BackupRestore,
            Command::AgentUpgrade(_) => CommandKind::AgentUpgrade,
            // --- issue 17 parts 4 and 6: host upkeep ---
            Command::BackupForget(_) => CommandKind::BackupForget,
            Command::ImagePrune(_) => CommandKind::ImagePrune,
            // --- compose (issue 17, part 1) ---
            Command::ComposeUpdate(_) => CommandKind::ComposeUpdate,
        }
    }

    /// The container a command acts on, if any (used to serialise mutating commands).
    pub fn container(&self) -> Option<&str> {
        match self {
            Command::Ping(_) | Command::ContainerList(_) => None,
            Command::ContainerInspect(a) | Command::ContainerStart(a) => Some(&a.container),
            Command::ContainerStop(a) | Command::ContainerRestart(a) => Some(&a.container),
            Command::ContainerLogs(a) => Some(&a.container),
            Command::ContainerUpdate(a) => Some(&a.container),
            Command::BackupRestore(a) => a.into.as_deref(),
            Command::BackupList(_) | Command::BackupRun(_) | Command::BackupVerify(_) => None,
            Command::AgentUpgrade(_) => None,
            // --- issue 17 parts 4 and 6: host upkeep ---
            Command::BackupForget(_) | Command::ImagePrune(_) => None,
            // --- compose (issue 17, part 1): locks every container of the project itself ---
            Command::ComposeUpdate(_) => None,
        }
    }

    /// Builds a command from a kind and its JSON arguments (`null` means no arguments), with an
    /// error that names what was wrong.
    pub fn from_parts(kind: &str, args: serde_json::Value) -> Result<Command, InvalidCommand> {
        Self::from_parts_message(kind, args).map_err(InvalidCommand)
    }

    fn from_parts_message(kind: &str, args: serde_json::Value) -> Result<Command, String> {
        let kind: CommandKind = kind.parse().map_err(|e: UnknownKind| e.to_string())?;
        let args = if args.is_null() {
            serde_json::json!({})
        } else {
            args
        };
        serde_json::from_value(serde_json::json!({"kind": kind.as_str(), "args": args}))
            .map_err(|e| format!("invalid arguments for {kind}: {e}"))
    }

    /// Checks argument values that the types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        self.check().map_err(InvalidCommand)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(c) = self.container() {
            if c.is_empty() || c.len() > 128 {
                return Err("container must be a name or id of 1-128 characters".into());
            }
        }
        if let Command::ContainerLogs(a) = self {
            if a.tail.unwrap_or(DEFAULT_LOG_TAIL) > MAX_LOG_TAIL {
                return Err(format!("tail must be at most {MAX_LOG_TAIL} lines"));
            }
        }
        if let Command::ContainerStop(a) | Command::ContainerRestart(a) = self {
            if a.timeout_secs.unwrap_or(0) > 3600 {
                return Err("timeout_secs must be at most 3600".into());
            }
        }
        if let Command::ContainerUpdate(a) = self {
            a.validate()?;
        }
        // --- compose (issue 17, part 1) ---
        if let Command::ComposeUpdate(a) = self {
            a.validate()?;
        }
        if let Command::BackupList(a) = self {
            if a.limit.unwrap_or(1) == 0 || a.limit.unwrap_or(1) > crate::backup::MAX_LIST_LIMIT {
                return Err(format!(
                    "limit must be between 1 and {}",
                    crate::backup::MAX_LIST_LIMIT
                ));
            }
        }
        if let Command::AgentUpgrade(a) = self {
            if a.manifest.manifest.len() > 4096 || a.manifest.signature.len() > 200 {
                return Err("manifest must be at most 4096 bytes and its signature 200".into());
            }
        }
        if let Command::BackupVerify(BackupVerifyArgs { id })
        | Command::BackupRestore(BackupRestoreArgs { id, .. }) = self
        {
            if id.is_empty() || id.len() > 128 {
                return Err("id must be a backup id of 1-128 characters".into());
            }
        }
        // --- issue 17 parts 4 and 6: host upkeep ---
        if let Command::BackupForget(a) = self {
            if a.job.is_empty() || a.job.len() > 128 {
                return Err("job must be a backup job name of 1-128 characters".into());
            }
        }
        Ok(())
    }
}

/// `agent.upgrade`: replace the agent binary with the build `manifest` describes (downloaded from
/// the relay at `/download/agent/<version>/<arch>`), through the root updater unit, which keeps
/// the previous binary and reverts on a crash loop or when the new version does not reach the
/// relay in time. `rollback` (signed by the relay, like every command) is the only way an agent
/// accepts an older version than its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentUpgradeArgs {
    pub manifest: crate::release::SignedManifest,
    #[serde(default)]
    pub rollback: bool,
}

/// Output of a successful `agent.upgrade` (reported by the new version after it reached the
/// relay), and of a reverted one inside the error's context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentUpgradeOutput {
    pub from_version: String,
    pub to_version: String,
    pub arch: String,
    /// The version running now.
    pub running_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PingArgs {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerListArgs {
    /// Include stopped containers (default true).
    #[serde(default = "yes")]
    pub all: bool,
    /// Only containers carrying this Docker label (`key=value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Default for ContainerListArgs {
    fn default() -> Self {
        ContainerListArgs {
            all: true,
            label: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// A container named by its name (without the leading `/`) or its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerRef {
    pub container: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerStopArgs {
    pub container: String,
    /// Seconds to wait after the stop signal before killing (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerLogsArgs {
    pub container: String,
    /// Last N lines (default 100, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Only lines since this time (RFC 3339, or unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default)]
    pub timestamps: bool,
}

/// Who a command is addressed to. A fan-out job is signed once with its selector as audience; each
/// agent checks the selector against the labels in its signed welcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Audience {
    Agent { agent_id: String },
    Selector { selector: Selector },
}

impl Audience {
    /// Whether an agent with this id and these (relay-signed) labels is addressed.
    pub fn includes(&self, agent_id: &str, labels: &Labels) -> bool {
        match self {
            Audience::Agent { agent_id: a } => a == agent_id,
            Audience::Selector { selector } => selector.matches(labels),
        }
    }
}

/// What the relay signs: everything that decides what the agent does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommandEnvelope {
    pub id: String,
    pub audience: Audience,
    pub command: Command,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An envelope as it travels: the exact JSON text that was signed, and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    pub envelope: String,
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("command signature invalid: {0}")]
    Signature(#[from] SigningError),
    #[error("command envelope is malformed: {0}")]
    Malformed(String),
}

impl SignedCommand {
    pub fn sign(envelope: &CommandEnvelope, key: &SigningKey) -> SignedCommand {
        let text = serde_json::to_string(envelope).expect("envelope serialises");
        let signature = key.sign(COMMAND_DOMAIN, text.as_bytes());
        SignedCommand {
            envelope: text,
            signature,
        }
    }

    /// Checks the signature over the exact received bytes, then parses them. Addressee, expiry and
    /// replay are the caller's checks (they need the agent's identity, clock and journal).
    pub fn verify(&self, relay_key: &PublicKey) -> Result<CommandEnvelope, VerifyError> {
        relay_key.verify(COMMAND_DOMAIN, self.envelope.as_bytes(), &self.signature)?;
        serde_json::from_str(&self.envelope).map_err(|e| VerifyError::Malformed(e.to_string()))
    }

    /// Reads the envelope without checking the signature (for the relay's own bookkeeping and
    /// for logging what was refused).
    pub fn peek(&self) -> Result<CommandEnvelope, VerifyError> {
        serde_json::from_str(&self.envelope).map_err(|e| VerifyError::Malformed(e.to_string()))
    }
}

/// How a command ended on the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// It ran and did what was asked.
    Succeeded,
    /// It ran (or tried to) and failed: unknown container, Docker error, ...
    Failed,
    /// The agent refused it before running: bad signature, wrong addressee, expired, policy.
    Rejected,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Succeeded => "succeeded",
            ResultStatus::Failed => "failed",
            ResultStatus::Rejected => "rejected",
        }
    }
}

/// A machine-readable error code plus a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

pub use crate::error_codes;

/// The outcome of one command on one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandResult {
    pub command_id: String,
    pub status: ResultStatus,
    /// The typed output of the command kind (see `*Output` types), when it succeeded; for
    /// `container.update` whatever the outcome (an `UpdateReport`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Output of `ping`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PingOutput {
    pub agent_version: String,
    pub hostname: String,
}

/// One container as `container.list` and heartbeats report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// created, running, paused, restarting, removing, exited, dead
    pub state: String,
    /// Docker's human status line, e.g. "Up 5 minutes (healthy)".
    pub status: String,
    /// starting, healthy, unhealthy; None when the container has no health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub restart_count: i64,
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    // --- issue 17 part 6: resource figures ---
    /// Memory and CPU from the container's cgroup (running containers, in heartbeats; None
    /// where the cgroup cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::upkeep::ContainerResources>,
}

/// Output of `container.list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerListOutput {
    pub containers: Vec<ContainerInfo>,
}

/// Output of `container.start` / `stop` / `restart`: the container's state afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerActionOutput {
    pub container: ContainerInfo,
    /// False when the container already was in the requested state (start of a running one).
    pub changed: bool,
}

/// Output of `container.logs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerLogsOutput {
    pub container: String,
    pub lines: Vec<String>,
    /// True when lines were dropped to keep the result under the frame size limit.
    pub truncated: bool,
}

/// Default TTL of the backup commands that can run long (a dump of a large database, a
/// restore): the relay's default command TTL (10 minutes) would end their delivery as
/// `no_result` while the agent still works on them.
pub const LONG_BACKUP_TTL: Duration = Duration::from_secs(6 * 3600);

/// Whether a command is a backup command that may run for hours.
pub fn is_long(command: &Command) -> bool {
    matches!(command, Command::BackupRun(_) | Command::BackupRestore(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(audience: Audience) -> CommandEnvelope {
        CommandEnvelope {
            id: "cmd_1".into(),
            audience,
            command: Command::ContainerStop(ContainerStopArgs {
                container: "web".into(),
                timeout_secs: Some(3),
            }),
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: "2026-01-01T00:10:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn command_wire_form() {
        let c =
            Command::from_parts("container.logs", json!({"container": "web", "tail": 5})).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"kind": "container.logs", "args": {"container": "web", "tail": 5, "timestamps": false}})
        );
        assert_eq!(
            Command::from_parts("ping", serde_json::Value::Null).unwrap(),
            Command::Ping(PingArgs {})
        );
        assert_eq!(
            Command::from_parts("container.list", json!({})).unwrap(),
            Command::ContainerList(ContainerListArgs {
                all: true,
                label: None
            })
        );
    }

    #[test]
    fn bad_commands_name_the_problem() {
        let e = Command::from_parts("container.nuke", json!({})).unwrap_err();
        assert!(e.contains("unknown command kind \"container.nuke\""), "{e}");
        let e = Command::from_parts("container.stop", json!({})).unwrap_err();
        assert!(
            e.contains("container.stop") && e.contains("container"),
            "{e}"
        );
        let e = Command::from_parts("container.stop", json!({"container": "a", "force": true}))
            .unwrap_err();
        assert!(e.contains("force"), "{e}");
        let c = Command::from_parts("container.logs", json!({"container": "a", "tail": 999999}))
            .unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn signed_envelope_verifies_and_detects_tampering() {
        let key = SigningKey::generate();
        let env = envelope(Audience::Agent {
            agent_id: "ag_1".into(),
        });
        let signed = SignedCommand::sign(&env, &key);
        assert_eq!(signed.verify(&key.public_key()).unwrap(), env);

        // Any change to the signed bytes breaks the signature.
        let tampered = SignedCommand {
            envelope: signed.envelope.replace("ag_1", "ag_2"),
            signature: signed.signature.clone(),
        };
        assert!(matches!(
            tampered.verify(&key.public_key()),
            Err(VerifyError::Signature(SigningError::BadSignature))
        ));
        // A different key's signature does not verify.
        let forged = SignedCommand::sign(&env, &SigningKey::generate());
        assert!(forged.verify(&key.public_key()).is_err());
        // The wire form of a signed command is stable: exactly the envelope text that was signed.
        let wire = serde_json::to_string(&signed).unwrap();
        let back: SignedCommand = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, signed);
    }

    #[test]
    fn canonical_bytes_are_deterministic() {
        let key = SigningKey::generate();
        let env = envelope(Audience::Selector {
            selector: "tier=build".parse().unwrap(),
        });
        let a = SignedCommand::sign(&env, &key);
        let b = SignedCommand::sign(&env.clone(), &key);
        assert_eq!(a.envelope, b.envelope);
        assert_eq!(
            a.envelope,
            r#"{"id":"cmd_1","audience":{"type":"selector","selector":"tier=build"},"command":{"kind":"container.stop","args":{"container":"web","timeout_secs":3}},"issued_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T00:10:00Z"}"#
        );
    }

    #[test]
    fn audience_checks() {
        let mut labels = Labels::new();
        labels.insert("tier".into(), "build".into());
        assert!(Audience::Agent {
            agent_id: "a".into()
        }
        .includes("a", &labels));
        assert!(!Audience::Agent {
            agent_id: "a".into()
        }
        .includes("b", &labels));
        let sel = Audience::Selector {
            selector: "tier=build".parse().unwrap(),
        };
        assert!(sel.includes("x", &labels));
        assert!(!sel.includes("x", &Labels::new()));
    }

    #[test]
    fn kinds_round_trip() {
        for k in CommandKind::ALL {
            assert_eq!(k.as_str().parse::<CommandKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
    }
}
