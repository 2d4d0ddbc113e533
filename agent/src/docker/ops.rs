//! Engine calls that `container.update` needs beyond the everyday ones: raw inspect and create
//! (so every configuration field survives, see `raw`), pull with progress and credentials,
//! rename, restart-policy changes, network connects, removal.
//!
//! These act on container ids the update itself resolved or created, so they do not apply the
//! visibility rules again (a backup container keeps its labels anyway).

use super::{container_error, engine_error, raw, DockerClient, DockerError, ResolvedContainer};
use bollard::auth::DockerCredentials;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    CreateImageOptions, RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// Timeout of one raw call.
const RAW_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Stop timeout Docker applies when a container sets none.
const DEFAULT_STOP_SECS: i64 = 10;

/// How far a pull got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub layers_total: usize,
    pub layers_done: usize,
    /// The engine's last status line ("Downloading", "Pull complete", ...).
    pub status: String,
}

impl DockerClient {
    fn socket(&self) -> Result<PathBuf, DockerError> {
        raw::socket_path(self.host.as_deref()).ok_or_else(|| {
            DockerError::Engine(
                "container.update needs the Docker engine on a unix socket (docker_host is TCP)"
                    .into(),
            )
        })
    }

    /// `/v1.41`-style prefix of the negotiated API version.
    async fn api_prefix(&self) -> Result<String, DockerError> {
        let v = self.client().await?.client_version();
        Ok(format!("/v{}.{}", v.major_version, v.minor_version))
    }

    pub(super) async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), DockerError> {
        let socket = self.socket()?;
        let path = format!("{}{path}", self.api_prefix().await?);
        raw::request(&socket, method, &path, body, RAW_TIMEOUT).await
    }

    /// The engine's inspect document of a container, exactly as the engine sent it; None when
    /// it does not exist.
    pub async fn inspect_json(&self, id: &str) -> Result<Option<Value>, DockerError> {
        match self
            .raw("GET", &format!("/containers/{}/json", enc(id)), None)
            .await?
        {
            (200, v) => Ok(Some(v)),
            (404, _) => Ok(None),
            (s, v) => Err(DockerError::Engine(raw::error_message(s, &v))),
        }
    }

    /// The engine's inspect document of an image; None when it is not present locally.
    pub async fn image_inspect_json(&self, reference: &str) -> Result<Option<Value>, DockerError> {
        match self
            .raw(
                "GET",
                &format!("/images/{}/json", enc_image(reference)),
                None,
            )
            .await?
        {
            (200, v) => Ok(Some(v)),
            (404, _) => Ok(None),
            (s, v) => Err(DockerError::Engine(raw::error_message(s, &v))),
        }
    }

    /// Creates a container from a create body in the engine's JSON form; returns its id.
    pub async fn create_json(&self, name: &str, body: &Value) -> Result<String, DockerError> {
        match self
            .raw(
                "POST",
                &format!("/containers/create?name={}", enc(name)),
                Some(body),
            )
            .await?
        {
            (201, v) => v
                .get("Id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| DockerError::Engine("docker created a container without id".into())),
            (s, v) => Err(DockerError::Engine(format!(
                "cannot create container {name}: {}",
                raw::error_message(s, &v)
            ))),
        }
    }

    /// Sets a container's restart policy (`{"Name": "no"}`, or the policy saved before).
    pub async fn set_restart_policy(&self, id: &str, policy: &Value) -> Result<(), DockerError> {
        let body = serde_json::json!({ "RestartPolicy": policy });
        match self
            .raw(
                "POST",
                &format!("/containers/{}/update", enc(id)),
                Some(&body),
            )
            .await?
        {
            (200, _) => Ok(()),
            (404, _) => Err(DockerError::NoSuchContainer(id.to_string())),
            (s, v) => Err(DockerError::Engine(format!(
                "cannot change the restart policy of {id}: {}",
                raw::error_message(s, &v)
            ))),
        }
    }

    /// Connects a container to a network with an endpoint config in the engine's JSON form.
    pub async fn connect_json(
        &self,
        network: &str,
        id: &str,
        endpoint: &Value,
    ) -> Result<(), DockerError> {
        let body = serde_json::json!({ "Container": id, "EndpointConfig": endpoint });
        match self
            .raw(
                "POST",
                &format!("/networks/{}/connect", enc(network)),
                Some(&body),
            )
            .await?
        {
            (200, _) => Ok(()),
            (s, v) => Err(DockerError::Engine(format!(
                "cannot connect the new container to network {network}: {}",
                raw::error_message(s, &v)
            ))),
        }
    }

    /// Pulls an image, reporting progress; fails with the engine's message (unknown image,
    /// unauthorized, ...).
    pub async fn pull(
        &self,
        image: &str,
        credentials: Option<DockerCredentials>,
        mut progress: impl FnMut(&PullProgress),
    ) -> Result<(), DockerError> {
        let docker = self.client().await?.with_timeout(PULL_TIMEOUT);
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = docker.create_image(Some(opts), None, credentials);
        let mut layers = LayerTracker::default();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { message, .. } => {
                    DockerError::Engine(format!("cannot pull {image}: {message}"))
                }
                bollard::errors::Error::DockerStreamError { error } => {
                    DockerError::Engine(format!("cannot pull {image}: {error}"))
                }
                other => DockerError::Engine(format!("cannot pull {image}: {other}")),
            })?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(DockerError::Engine(format!("cannot pull {image}: {err}")));
            }
            let status = info.status.unwrap_or_default();
            if let Some(p) = layers.track(info.id.as_deref(), status) {
                progress(p);
            }
        }
        Ok(())
    }

    /// The typed inspect of a container by id; None when it no longer exists.
    pub async fn inspect_id(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.client().await?.inspect_container(id, None).await {
            Ok(c) => Ok(Some(c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(engine_error(e)),
        }
    }

    pub async fn rename(&self, id: &str, new_name: &str) -> Result<(), DockerError> {
        self.client()
            .await?
            .rename_container(
                id,
                RenameContainerOptions {
                    name: new_name.to_string(),
                },
            )
            .await
            .map_err(|e| container_error(e, id))
    }

    /// Stops a container with its own stop signal and its own stop timeout (Docker's default
    /// when it sets none). Stopping a stopped container is not an error.
    pub async fn stop_own_timeout(
        &self,
        id: &str,
        stop_timeout_secs: Option<i64>,
    ) -> Result<(), DockerError> {
        let secs = stop_timeout_secs.unwrap_or(DEFAULT_STOP_SECS).max(0);
        let opts = StopContainerOptions {
            t: stop_timeout_secs.map(|t| t.clamp(0, i32::MAX as i64) as i32),
            ..Default::default()
        };
        match self
            .client()
            .await?
            .with_timeout(Duration::from_secs(secs as u64) + Duration::from_secs(60))
            .stop_container(id, Some(opts))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(container_error(e, id)),
        }
    }

    /// Starts a container; starting a running one is not an error.
    pub async fn start_id(&self, id: &str) -> Result<(), DockerError> {
        match self.client().await?.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(container_error(e, id)),
        }
    }

    /// Removes a container (never its volumes); a container already gone is not an error.
    pub async fn remove_id(&self, id: &str, force: bool) -> Result<(), DockerError> {
        let opts = RemoveContainerOptions {
            force,
            v: false,
            link: false,
        };
        match self.client().await?.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(container_error(e, id)),
        }
    }

    /// The last `tail` log lines of a container by id (empty when it is gone).
    pub async fn logs_tail(&self, id: &str, tail: u32) -> Vec<String> {
        let c = ResolvedContainer {
            id: id.to_string(),
            name: id.to_string(),
        };
        self.logs(&c, tail, None, false).await.unwrap_or_default()
    }

    /// Ids of every container (running or not) carrying label `key=value`.
    pub async fn containers_with_label(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, DockerError> {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let list = self
            .client()
            .await?
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(engine_error)?;
        Ok(list.into_iter().filter_map(|s| s.id).collect())
    }

    /// Names of other containers sharing this container's network namespace
    /// (`--network container:<it>`).
    pub async fn network_namespace_users(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Vec<String>, DockerError> {
        let all = self
            .client()
            .await?
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(engine_error)?;
        let targets = [format!("container:{id}"), format!("container:{name}")];
        Ok(all
            .iter()
            .filter(|s| {
                s.host_config
                    .as_ref()
                    .and_then(|h| h.network_mode.as_deref())
                    .is_some_and(|m| targets.iter().any(|t| t == m))
            })
            .map(super::summary_name)
            .collect())
    }
}

/// Counts the layers of a pull from the engine's status lines. Only layer lines (which carry
/// a layer id) count; when every layer is already present the engine sends none, and there is
/// no progress to report.
#[derive(Default)]
struct LayerTracker {
    seen: HashSet<String>,
    done: HashSet<String>,
    last: PullProgress,
}

impl LayerTracker {
    /// Takes one status line; returns the progress when the layer counts changed.
    fn track(&mut self, id: Option<&str>, status: String) -> Option<&PullProgress> {
        const LAYER_STATUSES: [&str; 8] = [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Verifying",
            "Download complete",
            "Extracting",
            "Pull complete",
            "Already exists",
        ];
        if let Some(id) = id {
            if LAYER_STATUSES.iter().any(|s| status.starts_with(s)) {
                self.seen.insert(id.to_string());
            }
            if status.starts_with("Pull complete") || status.starts_with("Already exists") {
                self.done.insert(id.to_string());
            }
        }
        let changed =
            self.seen.len() != self.last.layers_total || self.done.len() != self.last.layers_done;
        self.last = PullProgress {
            layers_total: self.seen.len(),
            layers_done: self.done.len(),
            status,
        };
        changed.then_some(&self.last)
    }
}

/// Percent-encodes a path segment or query value (names, ids and image references only hold
/// a few special characters).
pub(super) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An image reference in a path: the engine's router takes `/`, `:` and `@` literally there.
pub(super) fn enc_image(s: &str) -> String {
    s.split('/')
        .map(enc)
        .collect::<Vec<_>>()
        .join("/")
        .replace("%3A", ":")
        .replace("%40", "@")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_progress_counts_layers() {
        let mut t = LayerTracker::default();
        let mut step = |id: Option<&str>, status: &str| {
            t.track(id, status.to_string())
                .map(|p| (p.layers_done, p.layers_total))
        };
        // The tag line is not a layer.
        assert_eq!(step(Some("v2"), "Pulling from app"), None);
        assert_eq!(step(Some("aa"), "Pulling fs layer"), Some((0, 1)));
        assert_eq!(step(Some("bb"), "Already exists"), Some((1, 2)));
        assert_eq!(step(Some("aa"), "Downloading"), None);
        assert_eq!(step(Some("aa"), "Pull complete"), Some((2, 2)));
        assert_eq!(step(None, "Digest: sha256:ff"), None);
    }

    #[test]
    fn encoding() {
        assert_eq!(enc("web.flotilla-old-1"), "web.flotilla-old-1");
        assert_eq!(enc("127.0.0.1:5000/app:v2"), "127.0.0.1%3A5000%2Fapp%3Av2");
        assert_eq!(enc_image("127.0.0.1:5000/app:v2"), "127.0.0.1:5000/app:v2");
        assert_eq!(enc_image("a/b@sha256:ff"), "a/b@sha256:ff");
    }
}
