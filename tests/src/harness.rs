//! Real processes on loopback: a relay (`flotilla-relay serve`) on a free port with its own data
//! directory, agents (`flotilla-agent enroll` + `run`) with their own state directories, an API
//! client, the operator CLI, and containers on the real Docker engine scoped to one test.
//!
//! The binaries are the ones `cargo build --workspace --bins` put next to the test executable's
//! directory (scripts/test builds them first).

use anyhow::{anyhow, bail, Context, Result};
use bollard::Docker;
use flotilla_shared::api::{
    AgentDetail, AgentInfo, AgentStatus, CommandInfo, CreateCommand, CreateEnrollmentToken,
    CreateJob, EnrollmentTokenCreated, ErrorBody, EventRecord, JobInfo, JobState,
};
use flotilla_shared::command::Command;
use flotilla_shared::selector::Labels;
use flotilla_shared::signing::SigningKey;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command as Process};

/// Heartbeat interval the test relays hand to agents.
pub const TEST_HEARTBEAT_SECS: u64 = 1;

/// Polls `check` until it returns `Some`, or fails the test after `deadline` naming `what`.
/// Tests never sleep a fixed time to wait for an effect.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test executables live in target/<profile>/deps, other binaries in target/<profile>.
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// A unique short scope name for one test: used in container names and the agents' only_label.
pub fn scope(test: &str) -> String {
    format!("{test}-{}", &flotilla_shared::ids::new_id("s")[2..10])
}

/// Prints the tail of a process log when a test fails, so CI output says why.
fn dump_log_on_panic(what: &str, path: &Path) {
    if std::thread::panicking() {
        if let Ok(text) = std::fs::read_to_string(path) {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(60);
            eprintln!("---- last lines of {what} ({}) ----", path.display());
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

fn log_file(path: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file");
    Stdio::from(f)
}

// === impl Relay ===

/// A `flotilla-relay serve` process.
pub struct Relay {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub admin_token: String,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
}

impl Relay {
    pub async fn start() -> Relay {
        Self::start_with_env(&[]).await
    }

    /// Starts a relay on a free loopback port with test settings plus `env`.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-relay-")
            .tempdir()
            .expect("tempdir");
        let mut relay = Relay {
            dir,
            addr: String::new(),
            admin_token: String::new(),
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        relay.spawn("127.0.0.1:0").await;
        relay.admin_token = std::fs::read_to_string(relay.dir.path().join("admin-token"))
            .expect("relay wrote admin-token")
            .trim()
            .to_string();
        relay
    }

    async fn spawn(&mut self, listen: &str) {
        let addr_file = self.dir.path().join("listen-addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Process::new(bin("flotilla-relay"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env(
                "FLOTILLA_HEARTBEAT_INTERVAL_SECS",
                TEST_HEARTBEAT_SECS.to_string(),
            )
            .env("FLOTILLA_TEST_HOOKS", "true")
            .env("FLOTILLA_LOG", "info,flotilla_relay=debug")
            .stdin(Stdio::null())
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.log_path()))
            .kill_on_drop(true);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn flotilla-relay"));
        let addr = eventually(
            Duration::from_secs(20),
            "relay to write listen-addr",
            || {
                let f = addr_file.clone();
                async move {
                    std::fs::read_to_string(&f)
                        .ok()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                }
            },
        )
        .await;
        self.addr = addr;
        let url = self.url();
        eventually(Duration::from_secs(20), "relay /readyz", || {
            let url = url.clone();
            async move {
                let r = reqwest::get(format!("{url}/readyz")).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}{}",
            self.addr,
            flotilla_shared::protocol::CONNECT_PATH
        )
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url(), &self.admin_token)
    }

    /// The relay's signing key, read from its data dir, so tests can craft validly signed but
    /// otherwise bad commands (expired, mis-addressed, replayed).
    pub fn signing_key(&self) -> SigningKey {
        let der = std::fs::read(self.dir.path().join("relay.key")).expect("relay.key");
        SigningKey::from_pkcs8(&der).expect("relay.key is PKCS#8")
    }

    /// SIGKILL: no graceful shutdown, like a crash or power loss.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Kills the relay and starts it again on the same address with the same data dir.
    pub async fn restart(&mut self) {
        self.kill().await;
        let addr = self.addr.clone();
        self.spawn(&addr).await;
    }

    /// Creates a one-use enrollment token with these labels.
    pub async fn enrollment_token(&self, labels: &str) -> String {
        let req = CreateEnrollmentToken {
            labels: flotilla_shared::selector::parse_labels(labels).unwrap(),
            ttl_secs: Some(600),
            max_uses: Some(1),
            note: None,
        };
        let created: EnrollmentTokenCreated = self
            .api()
            .post("/api/v1/enrollment-tokens", &req)
            .await
            .expect("create enrollment token");
        created.token
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        dump_log_on_panic("relay", &self.log_path());
    }
}

// === impl Agent ===

/// A `flotilla-agent` with its own state directory, enrolled against a relay.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub name: String,
    /// Only containers with this Docker label are visible to the agent (`key=value`).
    pub only_label: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Enrolls (with a fresh one-use token carrying `labels`) and starts the agent.
    pub async fn start(relay: &Relay, name: &str, labels: &str, scope: &str) -> Agent {
        let mut agent = Self::enroll(relay, name, labels, scope).await;
        agent.run().await;
        agent
    }

    pub async fn enroll(relay: &Relay, name: &str, labels: &str, scope: &str) -> Agent {
        let token = relay.enrollment_token(labels).await;
        let dir = tempfile::Builder::new()
            .prefix("flotilla-agent-")
            .tempdir()
            .expect("tempdir");
        let out = enroll_with_token(&relay.url(), &token, dir.path(), name)
            .await
            .expect("run flotilla-agent enroll");
        assert!(
            out.status.success(),
            "enroll failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let relay_api = relay.api();
        let agents: Vec<AgentInfo> = relay_api.get("/api/v1/agents").await.unwrap();
        let id = agents
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.id.clone())
            .unwrap_or_else(|| panic!("enrolled agent {name} not listed: {agents:?}"));
        Agent {
            dir,
            id,
            name: name.to_string(),
            only_label: format!("flotilla.test.scope={scope}"),
            child: None,
            env: Vec::new(),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Sets an environment variable for the next `run`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "agent {} already running", self.name);
        let mut cmd = Process::new(bin("flotilla-agent"));
        cmd.arg("run")
            .arg("--state-dir")
            .arg(self.dir.path())
            .env("FLOTILLA_ONLY_LABEL", &self.only_label)
            .env("FLOTILLA_LOG", "info,flotilla_agent=debug")
            .stdin(Stdio::null())
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.log_path()))
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn flotilla-agent"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL, like a crash.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.run().await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        dump_log_on_panic(&format!("agent {}", self.name), &self.log_path());
    }
}

/// Runs `flotilla-agent enroll` and returns its output (success or not).
pub async fn enroll_with_token(
    relay_url: &str,
    token: &str,
    state_dir: &Path,
    name: &str,
) -> Result<std::process::Output> {
    Process::new(bin("flotilla-agent"))
        .arg("enroll")
        .arg("--relay")
        .arg(relay_url)
        .arg("--token")
        .arg(token)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--name")
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .await
        .context("spawn flotilla-agent enroll")
}

// === impl Api ===

/// An error answer of the dashboard API.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A minimal client of the dashboard API with one bearer token.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api::new(&self.base, token)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .context("api request")?;
        let status = resp.status();
        let body = resp.bytes().await.context("api body")?;
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_slice(&body).map_err(|e| {
                anyhow!(
                    "{status} with a body that is not an API error ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            })?;
            return Err(ApiError {
                status: status.as_u16(),
                code: err.error.code,
                message: err.error.message,
            }
            .into());
        }
        let body = if body.is_empty() { &b"null"[..] } else { &body };
        serde_json::from_slice(body).with_context(|| {
            format!(
                "decode {} body: {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(body)
            )
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        let _: serde_json::Value = self
            .send(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        Ok(())
    }

    pub async fn agent(&self, id: &str) -> AgentDetail {
        self.get(&format!("/api/v1/agents/{id}")).await.unwrap()
    }

    /// Sends a command to one agent; with `wait`, waits up to that many seconds for the result.
    pub async fn command(
        &self,
        agent: &str,
        command: Command,
        wait: Option<u64>,
    ) -> Result<CommandInfo> {
        let q = wait.map(|w| format!("?wait={w}")).unwrap_or_default();
        self.post(
            &format!("/api/v1/agents/{agent}/commands{q}"),
            &CreateCommand {
                command,
                ttl_secs: None,
            },
        )
        .await
    }

    pub async fn command_info(&self, id: &str) -> CommandInfo {
        self.get(&format!("/api/v1/commands/{id}")).await.unwrap()
    }

    /// Waits until the command reaches a final state and returns it.
    pub async fn wait_final(&self, id: &str, deadline: Duration) -> CommandInfo {
        eventually(deadline, &format!("command {id} to finish"), || async {
            let c = self.command_info(id).await;
            c.state.is_final().then_some(c)
        })
        .await
    }

    pub async fn job(&self, req: &CreateJob) -> Result<JobInfo> {
        self.post("/api/v1/jobs", req).await
    }

    pub async fn wait_job(&self, id: &str, deadline: Duration) -> JobInfo {
        eventually(deadline, &format!("job {id} to end"), || async {
            let j: JobInfo = self.get(&format!("/api/v1/jobs/{id}")).await.unwrap();
            (j.state != JobState::Running).then_some(j)
        })
        .await
    }

    pub async fn events(&self, agent: &str) -> Vec<EventRecord> {
        self.get(&format!("/api/v1/agents/{agent}/events?limit=1000"))
            .await
            .unwrap()
    }

    /// Waits until the agent is online and has sent a heartbeat.
    pub async fn wait_online(&self, agent: &str, deadline: Duration) -> AgentDetail {
        eventually(
            deadline,
            &format!("agent {agent} online with a heartbeat"),
            || async {
                let a = self.agent(agent).await;
                (a.agent.status == AgentStatus::Online && a.heartbeat.is_some()).then_some(a)
            },
        )
        .await
    }

    /// Waits until the relay reports the agent with this status.
    pub async fn wait_status(&self, agent: &str, status: AgentStatus, deadline: Duration) {
        eventually(
            deadline,
            &format!("agent {agent} {}", status.as_str()),
            || async { (self.agent(agent).await.agent.status == status).then_some(()) },
        )
        .await
    }

    /// Sends a raw text frame to a connected agent (relay test hook).
    pub async fn inject_frame(&self, agent: &str, text: String) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/v1/debug/agents/{agent}/frames", self.base))
            .bearer_auth(&self.token)
            .body(text)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("inject frame: {} {}", resp.status(), resp.text().await?);
        }
        Ok(())
    }
}

/// The error of a failed API call, for asserting on status and code.
pub fn api_error(e: &anyhow::Error) -> &ApiError {
    e.downcast_ref::<ApiError>()
        .unwrap_or_else(|| panic!("not an API error: {e:#}"))
}

// === impl Cli ===

/// Runs the `flotilla` operator CLI against a relay.
pub async fn cli(relay: &Relay, args: &[&str]) -> std::process::Output {
    Process::new(bin("flotilla"))
        .args(args)
        .env("FLOTILLA_ADDR", relay.url())
        .env("FLOTILLA_TOKEN", &relay.admin_token)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("spawn flotilla")
}

// === impl Containers ===

/// Test containers on the real engine. Each carries `flotilla.test=1` and the test's scope label,
/// and is removed when this value is dropped.
pub struct Containers {
    pub docker: Docker,
    pub scope: String,
    names: std::sync::Mutex<Vec<String>>,
}

impl Containers {
    pub async fn new(scope: &str) -> Containers {
        let docker = Docker::connect_with_local_defaults()
            .expect("docker client")
            .negotiate_version()
            .await
            .expect("the Docker engine must be reachable at /var/run/docker.sock for these tests");
        Containers {
            docker,
            scope: scope.to_string(),
            names: Default::default(),
        }
    }

    /// Creates and (if `start`) starts a container from `image` named `<scope>-<name>`.
    pub async fn run(
        &self,
        name: &str,
        image: &str,
        env: &[&str],
        extra_labels: &[(&str, &str)],
        start: bool,
    ) -> String {
        let full = format!("{}-{name}", self.scope);
        let mut labels: HashMap<String, String> = HashMap::new();
        labels.insert("flotilla.test".into(), "1".into());
        labels.insert("flotilla.test.scope".into(), self.scope.clone());
        for (k, v) in extra_labels {
            labels.insert(k.to_string(), v.to_string());
        }
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(env.iter().map(|s| s.to_string()).collect()),
            labels: Some(labels),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&full)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .unwrap_or_else(|e| panic!("create container {full}: {e}"));
        self.names.lock().unwrap().push(full.clone());
        if start {
            self.docker
                .start_container(&full, None)
                .await
                .unwrap_or_else(|e| panic!("start container {full}: {e}"));
        }
        full
    }

    pub async fn state(&self, name: &str) -> bollard::models::ContainerState {
        self.docker
            .inspect_container(name, None)
            .await
            .unwrap_or_else(|e| panic!("inspect {name}: {e}"))
            .state
            .expect("state")
    }

    pub async fn running(&self, name: &str) -> bool {
        self.state(name).await.running == Some(true)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        for n in names {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Labels from `k=v,...` text (panics on bad input: for test literals).
pub fn labels(s: &str) -> Labels {
    flotilla_shared::selector::parse_labels(s).unwrap()
}
