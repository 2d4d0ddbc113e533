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
use flotilla_shared::command::{Command, CommandResult, ResultStatus};
use flotilla_shared::selector::Labels;
use flotilla_shared::signing::SigningKey;
use flotilla_shared::update::{ContainerUpdateArgs, UpdateOutcome, UpdateReport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command as Process};

/// Heartbeat interval the test relays hand to agents.
pub const TEST_HEARTBEAT_SECS: u64 = 1;

/// Agent environment variable naming the Docker client config `container.update` reads registry
/// credentials from. Test agents get an empty one (see [`Agent::enroll`]).
pub const UPDATE_DOCKER_CONFIG_ENV: &str = "FLOTILLA_UPDATE_DOCKER_CONFIG";
/// Agent test hook: the update pauses (forever) at this phase after journaling it, and creates
/// `<state_dir>/update-paused-<phase>`, so a test can SIGKILL the agent there.
pub const UPDATE_PAUSE_ENV: &str = "FLOTILLA_TEST_UPDATE_PAUSE_AT";

/// Polls `check` until it returns `Some`, or fails the test after `deadline` naming `what`
/// (testkit's, re-exported for the end-to-end tests). Tests never sleep a fixed time to wait
/// for an effect.
pub use flotilla_testkit::eventually;

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
        Self::start_with_config("", env).await
    }

    /// Starts a relay like [`Relay::start_with_env`], with `relay_toml` as its config file
    /// (`relay.toml` in its data dir, passed as `FLOTILLA_CONFIG`; empty: no config file).
    pub async fn start_with_config(relay_toml: &str, env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-relay-")
            .tempdir()
            .expect("tempdir");
        let mut extra_env: Vec<(String, String)> = Vec::new();
        if !relay_toml.is_empty() {
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, relay_toml).expect("write relay.toml");
            extra_env.push((
                "FLOTILLA_CONFIG".into(),
                path.to_string_lossy().into_owned(),
            ));
        }
        extra_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut relay = Relay {
            dir,
            addr: String::new(),
            admin_token: String::new(),
            child: None,
            extra_env,
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
            .env("FLOTILLA_LOG", "info,flotilla_relay_server=debug")
            // Every test client and agent comes from 127.0.0.1: the per-client limits are
            // lifted unless a test sets them (e2e::limits does).
            .env("FLOTILLA_API_RATE_PER_SEC", "1000000")
            .env("FLOTILLA_API_RATE_BURST", "1000000")
            .env("FLOTILLA_MAX_CONNECTIONS_PER_ADDRESS", "0")
            .env("FLOTILLA_MAX_PENDING_HANDSHAKES_PER_ADDRESS", "1000000")
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

    /// Sets (or replaces) an environment variable of the relay's next start ([`Relay::restart`],
    /// [`Relay::start_again`]).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Starts the relay again after [`Relay::terminate`] or [`Relay::kill`]: same address,
    /// same data dir.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the relay is still running");
        let addr = self.addr.clone();
        self.spawn(&addr).await;
    }

    /// Starts another relay of the same cluster as `first`: its own data dir holding copies
    /// of `first`'s signing key and admin token (what an operator copies to a new relay), the
    /// same settings (and so the same `FLOTILLA_DATABASE_URL`).
    pub async fn start_joining(first: &Relay) -> Relay {
        Self::start_joining_with_env(first, &[]).await
    }

    /// [`Relay::start_joining`] with `env` over `first`'s settings (another database URL to
    /// the same database, say).
    pub async fn start_joining_with_env(first: &Relay, env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-relay-")
            .tempdir()
            .expect("tempdir");
        for file in ["relay.key", "admin-token"] {
            std::fs::copy(first.dir.path().join(file), dir.path().join(file))
                .unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
        let mut relay = Relay {
            dir,
            addr: String::new(),
            admin_token: first.admin_token.clone(),
            child: None,
            extra_env: first
                .extra_env
                .iter()
                .filter(|(k, _)| !env.iter().any(|(key, _)| key == k))
                .cloned()
                .chain(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
        };
        relay.spawn("127.0.0.1:0").await;
        relay
    }

    /// Starts a relay on a data directory prepared elsewhere (restored from a backup), on
    /// `listen` (the old relay's address, so its agents come back), with `env`.
    pub async fn start_on(
        dir: tempfile::TempDir,
        listen: &str,
        admin_token: &str,
        env: &[(&str, &str)],
    ) -> Relay {
        let mut relay = Relay {
            dir,
            addr: String::new(),
            admin_token: admin_token.to_string(),
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        relay.spawn(listen).await;
        relay
    }

    /// SIGTERM, then waits (at most `deadline`) for the relay to exit; how long it took.
    pub async fn terminate(&mut self, deadline: Duration) -> Duration {
        let child = self.child.take().expect("relay is running");
        terminate_child(child, "relay", deadline).await
    }

    /// Whether the relay process is still running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Creates a one-use enrollment token with these labels.
    pub async fn enrollment_token(&self, labels: &str) -> String {
        let req = CreateEnrollmentToken {
            labels: flotilla_shared::selector::parse_labels(labels).unwrap(),
            ttl_secs: Some(600),
            max_uses: Some(1),
            note: None,
            // Tests that enroll through install.sh name labels for the agent to ask for
            // (`--labels env=test`); tokens that restrict them are made by e2e::enrollment.
            agent_label_keys: vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()],
        };
        let created: EnrollmentTokenCreated = self
            .api()
            .post("/api/v1/enrollment-tokens", &req)
            .await
            .expect("create enrollment token");
        created.token
    }
}

/// SIGTERM to `child`, then waits for it to exit within `deadline`; how long it took.
async fn terminate_child(mut child: Child, what: &str, deadline: Duration) -> Duration {
    let pid = child.id().expect("child pid").to_string();
    let started = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
    tokio::time::timeout(deadline, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {deadline:?} of SIGTERM"))
        .expect("wait for the child");
    started.elapsed()
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
    /// Passed as `--config FILE` to `run` when set.
    config: Option<PathBuf>,
}

impl Agent {
    /// Enrolls (with a fresh one-use token carrying `labels`) and starts the agent.
    pub async fn start(relay: &Relay, name: &str, labels: &str, scope: &str) -> Agent {
        let mut agent = Self::enroll(relay, name, labels, scope).await;
        agent.run().await;
        agent
    }

    pub async fn enroll(relay: &Relay, name: &str, labels: &str, scope: &str) -> Agent {
        Self::enroll_via(relay, &relay.url(), name, labels, scope).await
    }

    /// Like [`Agent::enroll`], with the token from `relay` but enrolling at `url` (a load
    /// balancer in front of the relays): the URL the agent keeps and connects to.
    pub async fn enroll_via(
        relay: &Relay,
        url: &str,
        name: &str,
        labels: &str,
        scope: &str,
    ) -> Agent {
        let token = relay.enrollment_token(labels).await;
        let dir = tempfile::Builder::new()
            .prefix("flotilla-agent-")
            .tempdir()
            .expect("tempdir");
        let out = enroll_with_token(url, &token, dir.path(), name)
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
        // Registry credentials for `container.update` come from agent.toml or a Docker client
        // config; point the latter at an empty one so the host's ~/.docker/config.json is never
        // read by a test agent.
        let docker_config = dir.path().join("docker-config.json");
        std::fs::write(&docker_config, "{\"auths\": {}}\n").expect("write empty docker config");
        Agent {
            dir,
            id,
            name: name.to_string(),
            only_label: format!("flotilla.test.scope={scope}"),
            child: None,
            env: vec![(
                UPDATE_DOCKER_CONFIG_ENV.to_string(),
                docker_config.to_string_lossy().into_owned(),
            )],
            config: None,
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

    /// Writes `toml` as the agent's config file, passed as `--config FILE` from the next `run`
    /// on (environment variables still override it).
    pub fn set_config(&mut self, toml: &str) {
        let path = self.dir.path().join("agent-test.toml");
        std::fs::write(&path, toml).expect("write agent config file");
        self.config = Some(path);
    }

    /// The agent's state directory (`--state-dir`).
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
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
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn flotilla-agent"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGTERM, like `systemctl stop`; waits at most `deadline` for the process to exit and
    /// returns how long it took (panics if it did not exit).
    pub async fn terminate(&mut self, deadline: Duration) -> Duration {
        let child = self.child.take().expect("agent is running");
        terminate_child(child, &format!("agent {}", self.name), deadline).await
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

    /// Sends `container.update` to one agent without waiting; returns the command's id.
    pub async fn start_update(&self, agent: &str, args: ContainerUpdateArgs) -> String {
        let info = self
            .command(agent, Command::ContainerUpdate(args), None)
            .await
            .expect("create container.update command");
        info.id
    }

    /// Waits for the final result of a `container.update` and parses its output (present
    /// whatever the outcome) as an [`UpdateReport`]. Panics with the whole result when the
    /// output is missing or is not a report.
    pub async fn wait_update(&self, id: &str, deadline: Duration) -> UpdateResult {
        let info = self.wait_final(id, deadline).await;
        UpdateResult::from_info(info)
    }

    /// Sends `container.update` and waits up to `deadline` for its final result.
    pub async fn update(
        &self,
        agent: &str,
        args: ContainerUpdateArgs,
        deadline: Duration,
    ) -> UpdateResult {
        let id = self.start_update(agent, args).await;
        self.wait_update(&id, deadline).await
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

// === impl UpdateResult ===

/// The final result of a `container.update` with its report.
#[derive(Clone, Debug)]
pub struct UpdateResult {
    pub info: CommandInfo,
    pub result: CommandResult,
    pub report: UpdateReport,
}

impl UpdateResult {
    /// Parses a finished command's output as an [`UpdateReport`] (panics with the command when
    /// there is no result or no report).
    pub fn from_info(info: CommandInfo) -> UpdateResult {
        let result = info.result.clone().unwrap_or_else(|| {
            panic!(
                "container.update {} ended without a result: {info:#?}",
                info.id
            )
        });
        let output = result.output.clone().unwrap_or_else(|| {
            panic!(
                "container.update {} result carries no output (an UpdateReport is expected \
                 whatever the outcome): {result:#?}",
                info.id
            )
        });
        let report: UpdateReport = serde_json::from_value(output.clone()).unwrap_or_else(|e| {
            panic!(
                "container.update {} output is not an UpdateReport ({e}): {output:#}",
                info.id
            )
        });
        UpdateResult {
            info,
            result,
            report,
        }
    }

    /// The result's error code, if it failed.
    pub fn error_code(&self) -> Option<&str> {
        self.result.error.as_ref().map(|e| e.code.as_str())
    }

    /// Milliseconds the report's timings give for `phase` (summed when it appears twice).
    pub fn timing_ms(&self, phase: &str) -> Option<u64> {
        let ms: Vec<u64> = self
            .report
            .timings
            .iter()
            .filter(|t| t.phase == phase)
            .map(|t| t.ms)
            .collect();
        (!ms.is_empty()).then(|| ms.iter().sum())
    }

    /// Panics (with the result and report) unless the outcome is `outcome` and the status and
    /// error code are the ones the contract gives it.
    pub fn assert_outcome(&self, outcome: UpdateOutcome) {
        let expected_status = if outcome == UpdateOutcome::Updated {
            ResultStatus::Succeeded
        } else {
            ResultStatus::Failed
        };
        assert!(
            self.report.outcome == outcome
                && self.result.status == expected_status
                && self.error_code() == outcome.error_code(),
            "expected outcome {outcome} (status {}, error code {:?}), got outcome {} status {} \
             error {:?}\nreport: {:#?}",
            expected_status.as_str(),
            outcome.error_code(),
            self.report.outcome,
            self.result.status.as_str(),
            self.result.error,
            self.report
        );
    }
}

/// Arguments of a test update: `health`, a short health timeout (20 s) and stability window.
pub fn update_args(
    container: &str,
    image: &str,
    health: &str,
    stable_secs: u32,
) -> ContainerUpdateArgs {
    ContainerUpdateArgs {
        container: container.to_string(),
        image: image.to_string(),
        health: health.parse().expect("health spec"),
        health_timeout_secs: Some(20),
        stable_secs: Some(stable_secs),
        strategy: Default::default(),
        allow_drift: false,
    }
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

/// Docker label carrying a test's scope: the agents' `only_label`, and what cleanup finds
/// containers, networks and volumes of one test by.
pub const SCOPE_LABEL: &str = "flotilla.test.scope";

/// Test containers (and the networks and volumes they use) on the real engine. Each carries
/// `flotilla.test=1` and the test's scope label, and is removed when this value is dropped,
/// together with every other container carrying the scope label (such as the backup an update
/// leaves behind, `<name>.flotilla-old-...`).
pub struct Containers {
    pub docker: Docker,
    pub scope: String,
    names: std::sync::Mutex<Vec<String>>,
    networks: std::sync::Mutex<Vec<String>>,
    volumes: std::sync::Mutex<Vec<String>>,
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
            networks: Default::default(),
            volumes: Default::default(),
        }
    }

    /// The labels every test resource carries: `flotilla.test=1` and the scope.
    pub fn scope_labels(&self) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = HashMap::new();
        labels.insert("flotilla.test".into(), "1".into());
        labels.insert(SCOPE_LABEL.into(), self.scope.clone());
        labels
    }

    /// The full name of a container of this test: `<scope>-<name>`.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}-{name}", self.scope)
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
        let mut labels = HashMap::new();
        for (k, v) in extra_labels {
            labels.insert(k.to_string(), v.to_string());
        }
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(env.iter().map(|s| s.to_string()).collect()),
            labels: Some(labels),
            ..Default::default()
        };
        self.create(name, body, start).await
    }

    /// Creates (and if `start`, starts) a container named `<scope>-<name>` from a full create
    /// body (ports, networks, volumes, restart policy, health check, ...); the scope labels are
    /// added to the body's labels.
    pub async fn create(
        &self,
        name: &str,
        body: bollard::models::ContainerCreateBody,
        start: bool,
    ) -> String {
        self.create_with(name, body, serde_json::Map::new(), start)
            .await
    }

    /// Like [`Containers::create`], with `raw` merged into the top level of the JSON body the
    /// engine receives: for fields this engine (API 1.41) knows but the client's newer models
    /// dropped, such as `MacAddress`.
    pub async fn create_with(
        &self,
        name: &str,
        mut body: bollard::models::ContainerCreateBody,
        raw: serde_json::Map<String, serde_json::Value>,
        start: bool,
    ) -> String {
        let full = self.full_name(name);
        let mut labels = body.labels.take().unwrap_or_default();
        labels.extend(self.scope_labels());
        body.labels = Some(labels);
        self.names.lock().unwrap().push(full.clone());
        if raw.is_empty() {
            let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
                .name(&full)
                .build();
            self.docker
                .create_container(Some(opts), body)
                .await
                .unwrap_or_else(|e| panic!("create container {full}: {e}"));
        } else {
            let mut json = serde_json::to_value(&body).expect("create body serialises");
            json.as_object_mut()
                .expect("create body is an object")
                .extend(raw);
            let (status, answer) =
                docker_api_post(&format!("/containers/create?name={full}"), &json)
                    .await
                    .unwrap_or_else(|e| panic!("create container {full}: {e:#}"));
            assert!(
                status == 201,
                "create container {full}: engine answered {status}: {answer}\nbody: {json:#}"
            );
        }
        if start {
            self.docker
                .start_container(&full, None)
                .await
                .unwrap_or_else(|e| panic!("start container {full}: {e}"));
        }
        full
    }

    /// Creates a bridge network `<scope>-<name>` carrying the scope labels, removed on drop.
    /// With `ipv4_subnet`, that subnet (so containers can have static addresses); without,
    /// one the engine picks. Returns its name.
    pub async fn network(&self, name: &str, ipv4_subnet: Option<&str>) -> String {
        let full = self.full_name(name);
        let mut args = vec!["network", "create", "--driver", "bridge"];
        let labels: Vec<String> = self
            .scope_labels()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        if let Some(subnet) = ipv4_subnet {
            args.extend(["--subnet", subnet]);
        }
        args.push(&full);
        self.networks.lock().unwrap().push(full.clone());
        docker_cli(&args)
            .await
            .unwrap_or_else(|e| panic!("create network {full}: {e:#}"));
        full
    }

    /// Creates a network with a free /24 in 10.200.0.0-10.250.255.0 (retrying another when the
    /// engine reports an overlap with an existing network); returns its name and subnet prefix
    /// (`10.x.y`, so `format!("{prefix}.10")` is an address in it).
    pub async fn network_with_free_subnet(&self, name: &str) -> (String, String) {
        let full = self.full_name(name);
        let mut last_error = String::new();
        for _ in 0..20 {
            let mut r = [0u8; 2];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r)
                .expect("random bytes");
            let prefix = format!("10.{}.{}", 200 + r[0] % 51, r[1]);
            let subnet = format!("{prefix}.0/24");
            let labels: Vec<String> = self
                .scope_labels()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut args = vec![
                "network", "create", "--driver", "bridge", "--subnet", &subnet,
            ];
            for l in &labels {
                args.extend(["--label", l.as_str()]);
            }
            args.push(&full);
            match docker_cli(&args).await {
                Ok(_) => {
                    self.networks.lock().unwrap().push(full.clone());
                    return (full, prefix);
                }
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        panic!("cannot create network {full} with a free subnet: {last_error}");
    }

    /// Creates a named volume `<scope>-<name>` carrying the scope labels, removed on drop.
    pub async fn volume(&self, name: &str) -> String {
        self.volume_with_opts(name, &[]).await
    }

    /// A named volume backed by a tmpfs of `size` (e.g. `2m`): a small filesystem a test can
    /// fill. It is mounted (at its `_data` directory) while a container uses it.
    pub async fn tmpfs_volume(&self, name: &str, size: &str) -> String {
        let size = format!("o=size={size}");
        self.volume_with_opts(name, &["type=tmpfs", "device=tmpfs", &size])
            .await
    }

    async fn volume_with_opts(&self, name: &str, opts: &[&str]) -> String {
        let full = self.full_name(name);
        let labels: Vec<String> = self
            .scope_labels()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args = vec!["volume", "create"];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        for o in opts {
            args.extend(["--opt", o]);
        }
        args.push(&full);
        self.volumes.lock().unwrap().push(full.clone());
        docker_cli(&args)
            .await
            .unwrap_or_else(|e| panic!("create volume {full}: {e:#}"));
        full
    }

    /// The host directory holding a local volume's data (the tests run as root on the engine's
    /// host, so they can read it directly).
    pub async fn volume_dir(&self, volume: &str) -> PathBuf {
        let v = self
            .docker
            .inspect_volume(volume)
            .await
            .unwrap_or_else(|e| panic!("inspect volume {volume}: {e}"));
        PathBuf::from(v.mountpoint)
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

    /// The engine's own inspect document of a container or image (`docker inspect`), verbatim.
    pub async fn inspect_json(&self, what: &str) -> serde_json::Value {
        let out = docker_cli(&["inspect", "--type", "container", what])
            .await
            .unwrap_or_else(|e| panic!("inspect container {what}: {e:#}"));
        first_json_doc(&out, what)
    }

    pub async fn inspect_image_json(&self, image: &str) -> serde_json::Value {
        let out = docker_cli(&["inspect", "--type", "image", image])
            .await
            .unwrap_or_else(|e| panic!("inspect image {image}: {e:#}"));
        first_json_doc(&out, image)
    }

    /// Every container (running or not) carrying this test's scope label.
    pub async fn scoped(&self) -> Vec<bollard::models::ContainerSummary> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{SCOPE_LABEL}={}", self.scope)],
        );
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .expect("list containers")
    }
}

fn first_json_doc(out: &str, what: &str) -> serde_json::Value {
    let docs: serde_json::Value = serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("docker inspect {what} printed no JSON ({e}): {out}"));
    docs.get(0)
        .cloned()
        .unwrap_or_else(|| panic!("docker inspect {what} printed no document: {out}"))
}

/// Runs the docker CLI (without blocking the runtime) and returns its stdout; a non-zero exit
/// is an error carrying stderr.
pub async fn docker_cli(args: &[&str]) -> Result<String> {
    let out = Process::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run the docker CLI")?;
    if !out.status.success() {
        bail!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `POST path` with a JSON body on the engine's API (the unix socket of `DOCKER_HOST`, default
/// /var/run/docker.sock), at the engine's own API version; returns status and body.
pub async fn docker_api_post(path: &str, body: &serde_json::Value) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(String::from))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let body = serde_json::to_vec(body)?;
    let path = path.to_string();
    tokio::task::spawn_blocking(move || -> Result<(u16, String)> {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)
            .with_context(|| format!("connect to the engine at {socket}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let head = format!(
            "POST {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in the engine's answer: {head}"))?;
        Ok((status, answer.to_string()))
    })
    .await
    .context("engine request thread")?
}

/// Runs the docker CLI from a `Drop`, ignoring failures; returns stdout.
fn docker_quiet(args: &[&str]) -> String {
    std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for Containers {
    fn drop(&mut self) {
        let mut containers = std::mem::take(&mut *self.names.lock().unwrap());
        // Also whatever else carries the scope: containers an update created or renamed.
        let filter = format!("label={SCOPE_LABEL}={}", self.scope);
        containers.extend(
            docker_quiet(&["ps", "-aq", "--filter", &filter])
                .split_whitespace()
                .map(String::from),
        );
        if !containers.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(containers.iter().map(String::as_str));
            docker_quiet(&args);
        }
        let mut networks = std::mem::take(&mut *self.networks.lock().unwrap());
        networks.extend(
            docker_quiet(&["network", "ls", "-q", "--filter", &filter])
                .split_whitespace()
                .map(String::from),
        );
        networks.sort();
        networks.dedup();
        for n in networks {
            docker_quiet(&["network", "rm", &n]);
        }
        let mut volumes = std::mem::take(&mut *self.volumes.lock().unwrap());
        volumes.extend(
            docker_quiet(&["volume", "ls", "-q", "--filter", &filter])
                .split_whitespace()
                .map(String::from),
        );
        volumes.sort();
        volumes.dedup();
        for v in volumes {
            docker_quiet(&["volume", "rm", "--force", &v]);
        }
    }
}

/// A free TCP port on 127.0.0.1 right now (for publishing a container port to a fixed host
/// port; another process could take it before the container binds it, which is unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Labels from `k=v,...` text (panics on bad input: for test literals).
pub fn labels(s: &str) -> Labels {
    flotilla_shared::selector::parse_labels(s).unwrap()
}
