//! The only module that talks to the Docker engine (through bollard).
//!
//! Visibility lives here too, so that nothing else can see what it must not: containers labelled
//! `flotilla.ignore=true`, and — when `only_label` is configured — containers that do not carry
//! that label, are left out of every listing and event, and any command naming one fails exactly
//! like a command naming a container that does not exist (`no_such_container`).
//!
//! `ops` holds the calls only `container.update` needs, `raw` the small unix-socket client
//! through which the engine's inspect/create JSON passes untouched.

mod exec;
mod ops;
// issue 17 part 6: image pruning
mod images;
pub use images::LocalImage;
pub mod raw;

pub use exec::{ExecOutcome, ExecSpec};

pub use ops::PullProgress;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum,
};
use bollard::query_parameters::{
    EventsOptions, ListContainersOptions, LogsOptionsBuilder, RestartContainerOptions,
    StopContainerOptions,
};
use bollard::Docker;
use flotilla_shared::command::{error_codes, ContainerInfo};
use flotilla_shared::docker_labels;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Timeout for ordinary engine calls (list, inspect, start, logs).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time granted to stop/restart beyond the container's own stop timeout.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// Inspects run at most this many at a time when listing.
const INSPECT_CONCURRENCY: usize = 4;

/// What can go wrong talking to Docker, with the result error code for each.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DockerError {
    /// Unknown, or invisible to Flotilla (ignore label / only_label): the two are
    /// indistinguishable on purpose.
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("{0}")]
    InvalidArgs(String),
    /// The engine's own message (or why the engine could not be reached).
    #[error("{0}")]
    Engine(String),
}

impl DockerError {
    pub fn code(&self) -> &'static str {
        match self {
            DockerError::NoSuchContainer(_) => error_codes::NO_SUCH_CONTAINER,
            DockerError::InvalidArgs(_) => error_codes::INVALID_ARGS,
            DockerError::Engine(_) => error_codes::DOCKER,
        }
    }
}

fn engine_error(e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => DockerError::Engine(message),
        other => DockerError::Engine(other.to_string()),
    }
}

/// Maps an engine error for a container we resolved a moment ago: a 404 means it vanished.
fn container_error(e: BollardError, reference: &str) -> DockerError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => DockerError::NoSuchContainer(reference.to_string()),
        other => engine_error(other),
    }
}

// === impl Visibility ===

/// Which containers Flotilla may see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visibility {
    only_label: Option<(String, String)>,
}

impl Visibility {
    pub fn new(only_label: Option<(String, String)>) -> Self {
        Visibility { only_label }
    }

    /// Whether a container with these Docker labels is visible.
    pub fn allows(&self, labels: &HashMap<String, String>) -> bool {
        if labels
            .get(docker_labels::IGNORE)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return false;
        }
        match &self.only_label {
            Some((k, v)) => labels.get(k) == Some(v),
            None => true,
        }
    }

    fn allows_summary(&self, s: &ContainerSummary) -> bool {
        static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
        self.allows(
            s.labels
                .as_ref()
                .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new)),
        )
    }
}

/// A container resolved from a name or id the relay sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedContainer {
    pub id: String,
    pub name: String,
}

/// A running container with its image reference and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledContainer {
    pub container: ResolvedContainer,
    pub image: String,
    pub labels: HashMap<String, String>,
}

/// A container event from the engine's stream (visible containers only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// `start`, `die`, `oom`, `restart`, `health_status: healthy`, ...
    pub action: String,
    pub id: String,
    pub name: Option<String>,
    pub attributes: HashMap<String, String>,
    /// Unix time in nanoseconds.
    pub time_nano: i64,
}

/// Engine version figures for heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineVersion {
    pub version: Option<String>,
    pub api_version: Option<String>,
}

/// What a start/stop did.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionOutcome {
    pub changed: bool,
    pub container: ContainerInfo,
}

// === impl DockerClient ===

/// Handle to the engine; cheap to clone. Connects (and negotiates the API version) on first use
/// and retries on later calls if that failed, so the agent runs while Docker is down.
#[derive(Clone)]
pub struct DockerClient {
    host: Option<String>,
    visibility: Visibility,
    docker: Arc<OnceCell<Docker>>,
}

impl std::fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerClient")
            .field("host", &self.host)
            .field("visibility", &self.visibility)
            .finish()
    }
}

impl DockerClient {
    /// `host`: `unix://...`, `tcp://...` or `http://...`; None for the local default
    /// (`DOCKER_HOST` when it is a unix socket, else `/var/run/docker.sock`).
    pub fn new(host: Option<String>, visibility: Visibility) -> Self {
        DockerClient {
            host,
            visibility,
            docker: Arc::new(OnceCell::new()),
        }
    }

    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    async fn client(&self) -> Result<Docker, DockerError> {
        let docker = self
            .docker
            .get_or_try_init(|| async {
                let docker = match &self.host {
                    Some(h) => Docker::connect_with_host(h),
                    None => Docker::connect_with_local_defaults(),
                }
                .map_err(|e| DockerError::Engine(format!("cannot connect to docker: {e}")))?;
                // The engine may be older than bollard's default API version.
                docker
                    .with_timeout(CALL_TIMEOUT)
                    .negotiate_version()
                    .await
                    .map_err(|e| DockerError::Engine(format!("cannot reach docker: {e}")))
            })
            .await?;
        Ok(docker.clone())
    }

    pub async fn version(&self) -> Result<EngineVersion, DockerError> {
        let v = self.client().await?.version().await.map_err(engine_error)?;
        Ok(EngineVersion {
            version: v.version,
            api_version: v.api_version,
        })
    }

    /// Visible containers as the engine summarises them.
    async fn summaries(&self, all: bool) -> Result<Vec<ContainerSummary>, DockerError> {
        self.summaries_filtered(all, None).await
    }

    async fn summaries_filtered(
        &self,
        all: bool,
        id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = id.map(|id| ("id", id));
        self.summaries_matching(all, filters).await
    }

    /// Visible containers, optionally filtered by the engine (`("id", id)`, `("label", "k=v")`).
    async fn summaries_matching(
        &self,
        all: bool,
        filter: Option<(&str, &str)>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = filter.map(|(kind, value)| {
            let mut f = HashMap::new();
            f.insert(kind.to_string(), vec![value.to_string()]);
            f
        });
        let opts = ListContainersOptions {
            all,
            filters,
            ..Default::default()
        };
        let list = self
            .client()
            .await?
            .list_containers(Some(opts))
            .await
            .map_err(engine_error)?;
        Ok(list
            .into_iter()
            .filter(|s| self.visibility.allows_summary(s))
            .collect())
    }

    /// Visible running containers with their image and labels, from one list call (what backup
    /// discovery needs, without an inspect per container).
    pub async fn running_labelled(&self) -> Result<Vec<LabelledContainer>, DockerError> {
        Ok(self
            .summaries(false)
            .await?
            .into_iter()
            .map(|s| LabelledContainer {
                container: ResolvedContainer {
                    id: s.id.clone().unwrap_or_default(),
                    name: summary_name(&s),
                },
                image: s.image.clone().unwrap_or_default(),
                labels: s.labels.clone().unwrap_or_default(),
            })
            .collect())
    }

    /// Names of every visible container, running or not, from one list call.
    pub async fn existing_names(&self) -> Result<HashSet<String>, DockerError> {
        Ok(self
            .summaries(true)
            .await?
            .iter()
            .map(summary_name)
            .collect())
    }

    /// Every visible container (`all`: include stopped ones), with the details that need an
    /// inspect (restart count, OOM, health, exit code).
    pub async fn list(&self, all: bool) -> Result<Vec<ContainerInfo>, DockerError> {
        self.list_labelled(all, None).await
    }

    /// [`Docker::list`] restricted to containers carrying the Docker label `label` (`k=v`).
    pub async fn list_labelled(
        &self,
        all: bool,
        label: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        Ok(self
            .list_with_pids(all, label)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    /// [`DockerClient::list_labelled`] with each running container's main process id, from
    /// the same inspect (the heartbeat finds a container's cgroup with it).
    pub async fn list_with_pids(
        &self,
        all: bool,
        label: Option<&str>,
    ) -> Result<Vec<(ContainerInfo, Option<i64>)>, DockerError> {
        let summaries = self
            .summaries_matching(all, label.map(|l| ("label", l)))
            .await?;
        let docker = self.client().await?;
        let infos: Vec<Option<(ContainerInfo, Option<i64>)>> = stream::iter(summaries)
            .map(|s| {
                let docker = docker.clone();
                async move {
                    let id = s.id.clone().unwrap_or_default();
                    match docker.inspect_container(&id, None).await {
                        Ok(inspect) => {
                            let pid = inspect
                                .state
                                .as_ref()
                                .and_then(|st| st.pid)
                                .filter(|p| *p > 0);
                            Ok(Some((info_from(&s, &inspect), pid)))
                        }
                        // Removed between list and inspect: it no longer exists.
                        Err(BollardError::DockerResponseServerError {
                            status_code: 404, ..
                        }) => Ok(None),
                        Err(e) => Err(engine_error(e)),
                    }
                }
            })
            .buffered(INSPECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut infos: Vec<(ContainerInfo, Option<i64>)> = infos.into_iter().flatten().collect();
        infos.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(infos)
    }

    /// Finds a visible container by exact name (without the leading `/`), exact id, or unique
    /// id prefix — in that order, as the docker CLI does.
    pub async fn resolve(&self, reference: &str) -> Result<ResolvedContainer, DockerError> {
        let reference = reference.trim();
        let not_found = || DockerError::NoSuchContainer(reference.to_string());
        if reference.is_empty() {
            return Err(not_found());
        }
        let summaries = self.summaries(true).await?;
        let resolved = |s: &ContainerSummary| ResolvedContainer {
            id: s.id.clone().unwrap_or_default(),
            name: summary_name(s),
        };
        let wanted = reference.trim_start_matches('/');
        if let Some(s) = summaries.iter().find(|s| summary_name(s) == wanted) {
            return Ok(resolved(s));
        }
        if let Some(s) = summaries
            .iter()
            .find(|s| s.id.as_deref() == Some(reference))
        {
            return Ok(resolved(s));
        }
        let by_prefix: Vec<&ContainerSummary> = summaries
            .iter()
            .filter(|s| {
                s.id.as_deref()
                    .is_some_and(|id| id.starts_with(&reference.to_ascii_lowercase()))
            })
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok(resolved(one)),
            [] => Err(not_found()),
            _ => Err(DockerError::InvalidArgs(format!(
                "container id prefix {reference:?} matches {} containers; give more of the id",
                by_prefix.len()
            ))),
        }
    }

    /// The container's current `ContainerInfo`.
    pub async fn info(&self, c: &ResolvedContainer) -> Result<ContainerInfo, DockerError> {
        let summary = self
            .summaries_filtered(true, Some(&c.id))
            .await?
            .into_iter()
            .find(|s| s.id.as_deref() == Some(c.id.as_str()))
            .ok_or_else(|| DockerError::NoSuchContainer(c.name.clone()))?;
        let inspect = self.inspect_raw(c).await?;
        Ok(info_from(&summary, &inspect))
    }

    async fn inspect_raw(
        &self,
        c: &ResolvedContainer,
    ) -> Result<ContainerInspectResponse, DockerError> {
        self.client()
            .await?
            .inspect_container(&c.id, None)
            .await
            .map_err(|e| container_error(e, &c.name))
    }

    /// The engine's inspect document for the container, as JSON.
    pub async fn inspect(&self, c: &ResolvedContainer) -> Result<serde_json::Value, DockerError> {
        let inspect = self.inspect_raw(c).await?;
        serde_json::to_value(&inspect)
            .map_err(|e| DockerError::Engine(format!("cannot encode inspect output: {e}")))
    }

    /// Starts the container; `changed` is false when it already was running.
    pub async fn start(&self, c: &ResolvedContainer) -> Result<ActionOutcome, DockerError> {
        let before = self.inspect_raw(c).await?;
        let running = state_of(&before) == ContainerStateStatusEnum::RUNNING;
        if !running {
            self.client()
                .await?
                .start_container(&c.id, None)
                .await
                .map_err(|e| container_error(e, &c.name))?;
        }
        Ok(ActionOutcome {
            changed: !running,
            container: self.info(c).await?,
        })
    }

    /// Stops the container (SIGTERM, then SIGKILL after `timeout`); `changed` is false when it
    /// was not running.
    pub async fn stop(
        &self,
        c: &ResolvedContainer,
        timeout: Duration,
    ) -> Result<ActionOutcome, DockerError> {
        let before = self.inspect_raw(c).await?;
        let active = matches!(
            state_of(&before),
            ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::RESTARTING
                | ContainerStateStatusEnum::PAUSED
        );
        if active {
            let opts = StopContainerOptions {
                t: Some(secs_i32(timeout)),
                ..Default::default()
            };
            self.client()
                .await?
                .with_timeout(timeout + STOP_GRACE)
                .stop_container(&c.id, Some(opts))
                .await
                .map_err(|e| container_error(e, &c.name))?;
        }
        Ok(ActionOutcome {
            changed: active,
            container: self.info(c).await?,
        })
    }

    /// Restarts the container (stopping it first if it runs); always a change.
    pub async fn restart(
        &self,
        c: &ResolvedContainer,
        timeout: Duration,
    ) -> Result<ActionOutcome, DockerError> {
        let opts = RestartContainerOptions {
            t: Some(secs_i32(timeout)),
            ..Default::default()
        };
        self.client()
            .await?
            .with_timeout(timeout + STOP_GRACE)
            .restart_container(&c.id, Some(opts))
            .await
            .map_err(|e| container_error(e, &c.name))?;
        Ok(ActionOutcome {
            changed: true,
            container: self.info(c).await?,
        })
    }

    /// The last `tail` lines of stdout and stderr (interleaved as the engine stored them),
    /// optionally only since `since` (RFC 3339 or unix seconds), optionally with timestamps.
    pub async fn logs(
        &self,
        c: &ResolvedContainer,
        tail: u32,
        since: Option<&str>,
        timestamps: bool,
    ) -> Result<Vec<String>, DockerError> {
        let mut opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(false)
            .timestamps(timestamps)
            .tail(&tail.to_string());
        if let Some(s) = since {
            opts = opts.since(parse_since(s)?);
        }
        let docker = self.client().await?;
        let mut stream = docker.logs(&c.id, Some(opts.build()));
        let mut lines = LineSplitter::default();
        while let Some(chunk) = stream.next().await {
            use bollard::container::LogOutput;
            match chunk.map_err(|e| container_error(e, &c.name))? {
                LogOutput::StdErr { message } => lines.push(1, &message),
                LogOutput::StdOut { message }
                | LogOutput::Console { message }
                | LogOutput::StdIn { message } => lines.push(0, &message),
            }
        }
        Ok(lines.finish())
    }

    /// Follows the engine's container events from `since` (unix seconds with optional
    /// fraction; None = from now). Events of invisible containers are dropped here.
    pub async fn events(
        &self,
        since: Option<String>,
    ) -> Result<BoxStream<'static, Result<ContainerEvent, DockerError>>, DockerError> {
        let docker = self.client().await?;
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        let opts = EventsOptions {
            since,
            until: None,
            filters: Some(filters),
        };
        let visibility = self.visibility.clone();
        // The events request has no deadline: it is meant to stay open.
        let stream = docker
            .with_timeout(Duration::from_secs(u32::MAX as u64))
            .events(Some(opts))
            .filter_map(move |ev| {
                let out = match ev {
                    Err(e) => Some(Err(engine_error(e))),
                    Ok(ev) => {
                        let actor = ev.actor.unwrap_or_default();
                        let attributes = actor.attributes.unwrap_or_default();
                        if visibility.allows(&attributes) {
                            Some(Ok(ContainerEvent {
                                action: ev.action.unwrap_or_default(),
                                id: actor.id.unwrap_or_default(),
                                name: attributes.get("name").cloned(),
                                attributes,
                                time_nano: ev
                                    .time_nano
                                    .or(ev.time.map(|t| t * 1_000_000_000))
                                    .unwrap_or(0),
                            }))
                        } else {
                            None
                        }
                    }
                };
                std::future::ready(out)
            });
        Ok(stream.boxed())
    }
}

fn secs_i32(d: Duration) -> i32 {
    d.as_secs().min(i32::MAX as u64) as i32
}

fn state_of(inspect: &ContainerInspectResponse) -> ContainerStateStatusEnum {
    inspect
        .state
        .as_ref()
        .and_then(|s| s.status)
        .unwrap_or(ContainerStateStatusEnum::EMPTY)
}

fn summary_name(s: &ContainerSummary) -> String {
    s.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// Combines the list summary (names, image, human status) with the inspect document (restart
/// count, OOM, health, exit code) — neither alone has everything.
fn info_from(s: &ContainerSummary, inspect: &ContainerInspectResponse) -> ContainerInfo {
    let state = inspect.state.clone().unwrap_or_default();
    let status_enum = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    let state_text = match status_enum {
        ContainerStateStatusEnum::EMPTY => s.state.map(|x| x.to_string()).unwrap_or_default(),
        other => other.to_string(),
    };
    let health = state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .and_then(|h| match h {
            HealthStatusEnum::STARTING
            | HealthStatusEnum::HEALTHY
            | HealthStatusEnum::UNHEALTHY => Some(h.to_string()),
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
        });
    let exited = matches!(
        status_enum,
        ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD
    );
    let labels = s.labels.clone().unwrap_or_default();
    ContainerInfo {
        id: s.id.clone().unwrap_or_default(),
        name: summary_name(s),
        image: s.image.clone().unwrap_or_default(),
        image_id: s
            .image_id
            .clone()
            .or_else(|| inspect.image.clone())
            .unwrap_or_default(),
        state: state_text,
        status: s.status.clone().unwrap_or_default(),
        health,
        restart_count: inspect.restart_count.unwrap_or(0),
        oom_killed: state.oom_killed.unwrap_or(false),
        exit_code: if exited { state.exit_code } else { None },
        started_at: state
            .started_at
            .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
        compose_project: labels.get(docker_labels::COMPOSE_PROJECT).cloned(),
        compose_service: labels.get(docker_labels::COMPOSE_SERVICE).cloned(),
        resources: None,
    }
}

/// `since` for logs: RFC 3339 time or unix seconds (fractions allowed, ignored).
pub fn parse_since(s: &str) -> Result<i32, DockerError> {
    let t = s.trim();
    let bad = || {
        DockerError::InvalidArgs(format!(
            "invalid since {s:?}: expected an RFC 3339 time or unix seconds"
        ))
    };
    let secs = if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        dt.timestamp()
    } else {
        let whole = t.split_once('.').map(|(w, _)| w).unwrap_or(t);
        whole.parse::<i64>().map_err(|_| bad())?
    };
    i32::try_from(secs).ok().filter(|s| *s >= 0).ok_or_else(bad)
}

/// Reassembles lines from the engine's chunks, keeping stdout and stderr partial lines apart.
#[derive(Default)]
struct LineSplitter {
    partial: [Vec<u8>; 2],
    lines: Vec<String>,
}

impl LineSplitter {
    fn push(&mut self, stream: usize, bytes: &[u8]) {
        let partial = &mut self.partial[stream];
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.lines.push(String::from_utf8_lossy(&line).into_owned());
            } else {
                partial.push(b);
            }
        }
    }

    fn finish(mut self) -> Vec<String> {
        for p in &mut self.partial {
            if !p.is_empty() {
                self.lines.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn visibility_rules() {
        let all = Visibility::default();
        assert!(all.allows(&labels(&[])));
        assert!(all.allows(&labels(&[("flotilla.ignore", "false")])));
        assert!(!all.allows(&labels(&[("flotilla.ignore", "true")])));
        assert!(!all.allows(&labels(&[("flotilla.ignore", "TRUE")])));
        let only = Visibility::new(Some(("flotilla.test".into(), "run1".into())));
        assert!(only.allows(&labels(&[("flotilla.test", "run1")])));
        assert!(!only.allows(&labels(&[("flotilla.test", "run2")])));
        assert!(!only.allows(&labels(&[])));
        assert!(!only.allows(&labels(&[
            ("flotilla.test", "run1"),
            ("flotilla.ignore", "true")
        ])));
    }

    #[test]
    fn since_forms() {
        assert_eq!(parse_since("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_since("1700000000.25").unwrap(), 1_700_000_000);
        assert_eq!(parse_since("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert_eq!(
            parse_since("2023-11-14T23:13:20+01:00").unwrap(),
            1_700_000_000
        );
        let e = parse_since("yesterday").unwrap_err();
        assert_eq!(e.code(), "invalid_args");
        assert!(e.to_string().contains("yesterday"));
        assert!(parse_since("-5").is_err());
    }

    #[test]
    fn lines_are_reassembled_per_stream() {
        let mut s = LineSplitter::default();
        s.push(0, b"hel");
        s.push(1, b"err one\n");
        s.push(0, b"lo\r\nworld\n");
        s.push(0, b"tail");
        assert_eq!(s.finish(), vec!["err one", "hello", "world", "tail"]);
    }

    #[test]
    fn errors_have_contract_codes() {
        assert_eq!(
            DockerError::NoSuchContainer("web".into()).to_string(),
            "no such container: web"
        );
        assert_eq!(
            DockerError::NoSuchContainer("web".into()).code(),
            "no_such_container"
        );
        assert_eq!(DockerError::Engine("x".into()).code(), "docker_error");
    }

    /// Talks to the real engine (scripts/test makes sure it is reachable; without it this fails).
    #[tokio::test]
    async fn real_engine_smoke() {
        let d = DockerClient::new(None, Visibility::default());
        let v = d.version().await.unwrap();
        assert!(v.version.is_some());
        let list = d.list(true).await.unwrap();
        for c in &list {
            assert!(!c.name.starts_with('/'));
        }
        // The engine filters by label (`container.list {label}` of label-targeted rollouts).
        let none = d
            .list_labelled(true, Some("flotilla.test.surely-not=there"))
            .await
            .unwrap();
        assert!(none.is_empty());
        let e = d.resolve("flotilla-surely-not-there").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no such container: flotilla-surely-not-there"
        );
    }
}
