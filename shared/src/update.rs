//! `container.update`: its arguments, health-check spec and the report it returns.
//!
//! The report is the command's output whatever the outcome (updated, rolled back, failed and
//! unchanged, rollback failed), so the relay can keep a per-container update history.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default deadline for the new container to pass its health check.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u32 = 120;
/// Default stability window after the health check passed.
pub const DEFAULT_STABLE_SECS: u32 = 10;
/// Largest health timeout / stability window accepted.
pub const MAX_HEALTH_TIMEOUT_SECS: u32 = 3600;
/// Log lines of the failed container carried in a report.
pub const FAILED_LOG_LINES: u32 = 100;
/// Prefix of the name the old container carries while an update is in progress:
/// `<name>.flotilla-old-<command id suffix>`.
pub const BACKUP_NAME_MARKER: &str = ".flotilla-old-";
/// Marker of the temporary name of a start-first update's new container.
pub const NEW_NAME_MARKER: &str = ".flotilla-new-";
/// Docker label on a new container naming the update command that created it.
pub const UPDATE_LABEL: &str = "io.flotilla.update";

/// `container.update` arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContainerUpdateArgs {
    /// The container to update (name or id).
    pub container: String,
    /// The image reference to update to (`registry/repo:tag` or `...@sha256:...`).
    pub image: String,
    /// How the new container proves it works (default `auto`).
    #[serde(default)]
    pub health: HealthSpec,
    /// Deadline for the health check, seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u32>,
    /// Stability window after the health check, seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_secs: Option<u32>,
    #[serde(default)]
    pub strategy: UpdateStrategy,
    // --- compose (issue 17, part 1) ---
    /// For a container of a compose project whose files may not be edited (outside
    /// `[compose] allowed_dirs`): update the container only and report the drift, instead of
    /// refusing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_drift: bool,
}

message_error!(
    /// `container.update` arguments out of range (the message names the argument).
    pub InvalidUpdate
);

impl ContainerUpdateArgs {
    pub fn health_timeout_secs(&self) -> u32 {
        self.health_timeout_secs
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT_SECS)
    }

    pub fn stable_secs(&self) -> u32 {
        self.stable_secs.unwrap_or(DEFAULT_STABLE_SECS)
    }

    pub fn validate(&self) -> Result<(), InvalidUpdate> {
        self.check().map_err(InvalidUpdate)
    }

    fn check(&self) -> Result<(), String> {
        let image = self.image.trim();
        if image.is_empty() || image.len() > 512 || image.chars().any(char::is_whitespace) {
            return Err(format!(
                "image {:?} is not an image reference (1-512 characters, no spaces)",
                self.image
            ));
        }
        if self.health_timeout_secs() == 0 || self.health_timeout_secs() > MAX_HEALTH_TIMEOUT_SECS {
            return Err(format!(
                "health_timeout_secs must be between 1 and {MAX_HEALTH_TIMEOUT_SECS}"
            ));
        }
        if self.stable_secs() > MAX_HEALTH_TIMEOUT_SECS {
            return Err(format!(
                "stable_secs must be at most {MAX_HEALTH_TIMEOUT_SECS}"
            ));
        }
        Ok(())
    }
}

/// `stop-first` (default): the old container stops before the new one starts. `start-first`:
/// the new one runs and passes its health check before the old one stops (only for containers
/// that publish no host ports, have no static address or MAC, and no other container shares
/// their network namespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    #[default]
    StopFirst,
    StartFirst,
}

impl UpdateStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStrategy::StopFirst => "stop-first",
            UpdateStrategy::StartFirst => "start-first",
        }
    }
}

impl FromStr for UpdateStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop-first" => Ok(UpdateStrategy::StopFirst),
            "start-first" => Ok(UpdateStrategy::StartFirst),
            other => Err(format!(
                "invalid strategy {other:?}: expected stop-first or start-first"
            )),
        }
    }
}

impl fmt::Display for UpdateStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the new container proves it works. Written as a string: `auto`, `docker`, `running`,
/// `http:<port><path>` (e.g. `http:8080/healthz`), `tcp:<port>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthSpec {
    /// The container's Docker HEALTHCHECK when it has one, else `running`.
    #[default]
    Auto,
    /// The container's Docker HEALTHCHECK must report healthy (an error if it has none).
    Docker,
    /// The container must be running (then stay up for the stability window).
    Running,
    /// `GET http://<container address>:<port><path>` from the host must answer 2xx or 3xx.
    Http { port: u16, path: String },
    /// A TCP connection to `<container address>:<port>` from the host must succeed.
    Tcp { port: u16 },
}

impl fmt::Display for HealthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthSpec::Auto => f.write_str("auto"),
            HealthSpec::Docker => f.write_str("docker"),
            HealthSpec::Running => f.write_str("running"),
            HealthSpec::Http { port, path } => write!(f, "http:{port}{path}"),
            HealthSpec::Tcp { port } => write!(f, "tcp:{port}"),
        }
    }
}

impl FromStr for HealthSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid health check {s:?}: expected auto, docker, running, \
                 http:<port><path> (e.g. http:8080/healthz) or tcp:<port>"
            )
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        match s {
            "auto" => Ok(HealthSpec::Auto),
            "docker" => Ok(HealthSpec::Docker),
            "running" => Ok(HealthSpec::Running),
            _ => {
                if let Some(rest) = s.strip_prefix("http:") {
                    let (p, path) = match rest.find('/') {
                        Some(i) => (&rest[..i], &rest[i..]),
                        None => (rest, "/"),
                    };
                    if path.len() > 1024
                        || path.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(bad());
                    }
                    Ok(HealthSpec::Http {
                        port: port(p)?,
                        path: path.to_string(),
                    })
                } else if let Some(p) = s.strip_prefix("tcp:") {
                    Ok(HealthSpec::Tcp { port: port(p)? })
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl Serialize for HealthSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HealthSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How an update ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The new container passed its health check and stability window; the old one is gone.
    Updated,
    /// The new container failed; the old one runs again and passed the same health check.
    RolledBack,
    /// Nothing was changed (refused, pull failed, ...): the old container was never stopped.
    FailedUnchanged,
    /// The new container failed and so did the old one on the way back. The old container is
    /// left in place under its name, never deleted. Needs an operator.
    RollbackFailed,
}

impl UpdateOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOutcome::Updated => "updated",
            UpdateOutcome::RolledBack => "rolled_back",
            UpdateOutcome::FailedUnchanged => "failed_unchanged",
            UpdateOutcome::RollbackFailed => "rollback_failed",
        }
    }

    /// The result error code of a failed outcome (None for `updated`).
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            UpdateOutcome::Updated => None,
            UpdateOutcome::RolledBack => Some(crate::error_codes::UPDATE_ROLLED_BACK),
            UpdateOutcome::FailedUnchanged => Some(crate::error_codes::UPDATE_FAILED_UNCHANGED),
            UpdateOutcome::RollbackFailed => Some(crate::error_codes::ROLLBACK_FAILED),
        }
    }
}

impl fmt::Display for UpdateOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Phases of an update, in order, as journaled by the agent and reported in progress events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Checked and journaled; nothing touched yet.
    Validated,
    Pulling,
    Pulled,
    /// About to rename / clear the restart policy of / stop the old container.
    StoppingOld,
    OldStopped,
    /// Creating the new container (its id is journaled as soon as it exists).
    Creating,
    Starting,
    HealthGate,
    /// The new container is proven; removing the old one.
    Committing,
    RollingBack,
    Done,
}

impl UpdatePhase {
    pub const ALL: [UpdatePhase; 11] = [
        UpdatePhase::Validated,
        UpdatePhase::Pulling,
        UpdatePhase::Pulled,
        UpdatePhase::StoppingOld,
        UpdatePhase::OldStopped,
        UpdatePhase::Creating,
        UpdatePhase::Starting,
        UpdatePhase::HealthGate,
        UpdatePhase::Committing,
        UpdatePhase::RollingBack,
        UpdatePhase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePhase::Validated => "validated",
            UpdatePhase::Pulling => "pulling",
            UpdatePhase::Pulled => "pulled",
            UpdatePhase::StoppingOld => "stopping_old",
            UpdatePhase::OldStopped => "old_stopped",
            UpdatePhase::Creating => "creating",
            UpdatePhase::Starting => "starting",
            UpdatePhase::HealthGate => "health_gate",
            UpdatePhase::Committing => "committing",
            UpdatePhase::RollingBack => "rolling_back",
            UpdatePhase::Done => "done",
        }
    }
}

impl FromStr for UpdatePhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        UpdatePhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown update phase {s:?}"))
    }
}

impl fmt::Display for UpdatePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long one phase took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseTiming {
    /// validate, pull, stop_old, create, start, health, stable, commit, rollback, rollback_health
    pub phase: String,
    pub ms: u64,
}

/// What a health gate saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthEvidence {
    /// docker, running, http, tcp (what `auto` resolved to).
    pub method: String,
    pub passed: bool,
    /// Probes or status polls made until the check passed or failed.
    pub checks: u32,
    /// Time until the check passed or failed, ms.
    pub check_ms: u64,
    /// Time the container then stayed up (the stability window), ms.
    pub stable_ms: u64,
    /// One sentence: what passed or what failed ("health status healthy after 3 s",
    /// "container exited with code 1 during the stability window", ...).
    pub detail: String,
    /// The last Docker health-check output or probe answer, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output: Option<String>,
}

/// The output of `container.update`, whatever its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateReport {
    pub outcome: UpdateOutcome,
    /// The container's name.
    pub container: String,
    /// The image reference asked for.
    pub image: String,
    pub strategy: UpdateStrategy,
    /// The health check asked for.
    pub health: HealthSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_image_id: Option<String>,
    /// `repo@sha256:...` of the old image when it came from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_image_digest: Option<String>,
    /// The phase reached last (`done` when finished normally).
    pub phase: UpdatePhase,
    pub timings: Vec<PhaseTiming>,
    /// The new container's health gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_evidence: Option<HealthEvidence>,
    /// The old container's health gate after a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_health_evidence: Option<HealthEvidence>,
    /// Why it did not end `updated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last lines (at most 100) of the container that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_logs: Vec<String>,
    /// The agent was restarted in the middle of this update and finished it from its journal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// Whether the old container was ever stopped.
    pub old_stopped: bool,
    /// Total time, ms.
    pub total_ms: u64,
    // --- compose (issue 17, part 1) ---
    /// What the update did to the container's compose project files, for a compose container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<ComposeReport>,
}

// --- compose (issue 17, part 1) ---
/// What an update of a compose container did to its project's files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComposeReport {
    pub project: String,
    pub service: String,
    /// Files edited (resolved paths); their previous content is in `<file>.flotilla.bak`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The config hash given to the new container (`com.docker.compose.config-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Set when the files were NOT edited (`allow_drift`): why; the project now declares
    /// another image than the container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    /// A problem that did not stop the update (the hash could not be computed, a file could
    /// not be restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The files were put back (the update did not end `updated`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restored: bool,
}

/// What the update's own timeouts do not bound: pulling the image, stopping the old container
/// (its own stop timeout), creating and starting containers, the agent's bookkeeping.
pub const UPDATE_SLACK: Duration = Duration::from_secs(15 * 60);

/// The longest an update can reasonably run once the agent started it: the health gate and the
/// stability window of the new container, the same again for the old one when it rolls back,
/// plus [`UPDATE_SLACK`].
pub fn run_budget(args: &ContainerUpdateArgs) -> Duration {
    let gate = u64::from(args.health_timeout_secs()) + u64::from(args.stable_secs());
    Duration::from_secs(2 * gate) + UPDATE_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_specs_round_trip() {
        for (text, spec) in [
            ("auto", HealthSpec::Auto),
            ("docker", HealthSpec::Docker),
            ("running", HealthSpec::Running),
            (
                "http:8080/healthz",
                HealthSpec::Http {
                    port: 8080,
                    path: "/healthz".into(),
                },
            ),
            ("tcp:5432", HealthSpec::Tcp { port: 5432 }),
        ] {
            assert_eq!(text.parse::<HealthSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), text);
            assert_eq!(
                serde_json::to_value(&spec).unwrap(),
                serde_json::json!(text)
            );
        }
        assert_eq!(
            "http:80".parse::<HealthSpec>().unwrap(),
            HealthSpec::Http {
                port: 80,
                path: "/".into()
            }
        );
        for bad in [
            "",
            "http",
            "http:",
            "http:0/x",
            "tcp:99999",
            "tcp:x",
            "ftp:21",
            "http:80/a b",
        ] {
            let e = bad.parse::<HealthSpec>().unwrap_err();
            assert!(e.contains("invalid health check"), "{e}");
        }
    }

    #[test]
    fn args_defaults_and_validation() {
        let a: ContainerUpdateArgs =
            serde_json::from_value(serde_json::json!({"container": "web", "image": "r/x:2"}))
                .unwrap();
        assert_eq!(a.health, HealthSpec::Auto);
        assert_eq!(a.strategy, UpdateStrategy::StopFirst);
        assert_eq!(a.health_timeout_secs(), 120);
        assert_eq!(a.stable_secs(), 10);
        a.validate().unwrap();
        let e: Result<ContainerUpdateArgs, _> = serde_json::from_value(
            serde_json::json!({"container": "web", "image": "x", "strategy": "sideways"}),
        );
        assert!(e.unwrap_err().to_string().contains("sideways"));
        let bad = ContainerUpdateArgs {
            image: "a b".into(),
            ..a.clone()
        };
        assert!(bad.validate().unwrap_err().contains("image"));
        let bad = ContainerUpdateArgs {
            health_timeout_secs: Some(0),
            ..a
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn phases_are_ordered_and_named() {
        for p in UpdatePhase::ALL {
            assert_eq!(p.as_str().parse::<UpdatePhase>().unwrap(), p);
        }
        assert!(UpdatePhase::Pulled < UpdatePhase::StoppingOld);
        assert_eq!(
            UpdateOutcome::RolledBack.error_code(),
            Some("update_rolled_back")
        );
    }
}
