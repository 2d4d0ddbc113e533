//! Compose projects: what an update did to a project's files (`ComposeReport`, in the update
//! report), `compose.update` (one project's services running one image repository, updated
//! together under one health gate and one rollback) and the drift the heartbeat reports (a
//! container whose running image differs from what its project's files declare).

pub use crate::update::ComposeReport;
use crate::update::{ContainerUpdateArgs, HealthSpec, UpdateOutcome, UpdateReport, UpdateStrategy};
use serde::{Deserialize, Serialize};

/// `compose.update` arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ComposeUpdateArgs {
    /// The compose project (`com.docker.compose.project`).
    pub project: String,
    /// Only these services (default: every service of the project running `image`'s
    /// repository).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The image reference to update to.
    pub image: String,
    #[serde(default)]
    pub health: HealthSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_secs: Option<u32>,
    #[serde(default)]
    pub strategy: UpdateStrategy,
    /// Update the containers even where the project's files may not be edited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_drift: bool,
}

impl ComposeUpdateArgs {
    /// The `container.update` arguments of one of the project's containers.
    pub fn for_container(&self, container: &str) -> ContainerUpdateArgs {
        ContainerUpdateArgs {
            container: container.to_string(),
            image: self.image.clone(),
            health: self.health.clone(),
            health_timeout_secs: self.health_timeout_secs,
            stable_secs: self.stable_secs,
            strategy: self.strategy,
            allow_drift: self.allow_drift,
        }
    }

    /// Checks what the types cannot (the message names the argument).
    pub fn validate(&self) -> Result<(), crate::update::InvalidUpdate> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        };
        if !name_ok(&self.project) {
            return Err(crate::update::InvalidUpdate(format!(
                "project {:?} is not a compose project name (1-128 letters, digits, _ . -)",
                self.project
            )));
        }
        if let Some(s) = self.services.iter().find(|s| !name_ok(s)) {
            return Err(crate::update::InvalidUpdate(format!(
                "service {s:?} is not a compose service name (1-128 letters, digits, _ . -)"
            )));
        }
        if self.services.len() > 64 {
            return Err(crate::update::InvalidUpdate("at most 64 services".into()));
        }
        self.for_container(&self.project).validate()
    }
}

/// `compose.update`'s output whatever the outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComposeUpdateReport {
    pub project: String,
    pub image: String,
    /// `updated` only when every service is; otherwise every service was put back.
    pub outcome: UpdateOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The project's files (shared by the services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<ComposeReport>,
    /// One report per service's container.
    pub services: Vec<UpdateReport>,
}

/// A compose container whose running image is not what its project declares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComposeDrift {
    pub container: String,
    pub project: String,
    pub service: String,
    /// What the container runs (`Config.Image`).
    pub running_image: String,
    /// What the project's files declare, interpolation resolved (None when unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_image: Option<String>,
    /// Why the files could not be read, when they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
