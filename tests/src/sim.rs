//! Simulated agents: a load generator that speaks the agent protocol (real enrollment, real
//! challenge/response, real websockets on loopback) without a Docker engine behind it.
//!
//! Each simulated agent has one container, `app`, and answers what a rollout sends it:
//! - `container.list` with that container (it matches any label filter);
//! - `container.update` after [`SimConfig::update_ms`]: an image reference containing
//!   [`SimConfig::fail_marker`] ends `rolled_back` (the health verdict failed, the old image runs
//!   again), anything else `updated`; an image containing [`SimConfig::sick_marker`] updates but
//!   the container reports `unhealthy` in every later heartbeat (a failure found by the soak);
//! - anything else gets a `failed` result (`unsupported_by_simulator`).
//!
//! Heartbeats go out every [`SimConfig::heartbeat_every`]. Every failing verdict the fleet
//! produces is timestamped in [`SimStats`], so a benchmark can measure how long the relay takes
//! to act on it. Not a test double for the agent's logic: the e2e tests use real agents.
//!
//! Enrollment and the `auth` frame are the scripted agent's ([`flotilla_testkit::agent`]); the
//! loop is its own, because a simulated agent answers on its own, thousands at a time, with
//! small websocket buffers, where the scripted agent is driven frame by frame by one test.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::api::AgentFacts;
use flotilla_shared::command::{
    Command, CommandEnvelope, CommandResult, ContainerInfo, ContainerListOutput, ErrorInfo,
    ResultStatus,
};
use flotilla_shared::heartbeat::{DockerSnapshot, Heartbeat, HostMetrics};
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame};
use flotilla_shared::signing::SigningKey;
use flotilla_shared::update::{UpdateOutcome, UpdatePhase, UpdateReport, UpdateStrategy};
use flotilla_testkit::agent;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The one container every simulated agent runs.
pub const SIM_CONTAINER: &str = "app";

/// How the simulated fleet behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long a `container.update` takes.
    pub update_ms: u64,
    pub heartbeat_every: Duration,
    /// Image references containing this fail their health gate and roll back.
    pub fail_marker: String,
    /// Image references containing this update, then report the container unhealthy.
    pub sick_marker: String,
    /// The image every agent starts with.
    pub initial_image: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            update_ms: 200,
            heartbeat_every: Duration::from_secs(2),
            fail_marker: "-bad".into(),
            sick_marker: "-sick".into(),
            initial_image: "registry.local/app:v1".into(),
        }
    }
}

/// What the simulated fleet saw and did.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Agents with an authenticated connection (welcome received).
    pub connected: AtomicUsize,
    /// Commands received.
    pub commands: AtomicUsize,
    /// `container.update` commands received.
    pub updates: AtomicUsize,
    /// When each failing verdict was sent (a rolled-back result, or the first unhealthy
    /// heartbeat), with the agent id.
    pub verdicts: Mutex<Vec<(DateTime<Utc>, String)>>,
}

/// Enrolls one simulated agent with a fresh enrollment token of its own (as operators hand them
/// out). `token` is an enrollment token carrying the agent's labels.
pub async fn enroll(
    http: &reqwest::Client,
    relay_url: &str,
    token: String,
    name: &str,
) -> Result<(String, SigningKey)> {
    let key = SigningKey::generate();
    let body = agent::enroll(http, relay_url, token, name, AgentFacts::default(), &key).await?;
    Ok((body.agent_id, key))
}

/// Runs one simulated agent until its connection ends.
pub async fn run(
    ws_url: String,
    id: String,
    key: SigningKey,
    config: Arc<SimConfig>,
    stats: Arc<SimStats>,
) -> Result<()> {
    let mut ws_config = WebSocketConfig::default();
    ws_config.read_buffer_size = 4096;
    ws_config.write_buffer_size = 0;
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&ws_url, Some(ws_config), true)
        .await
        .with_context(|| format!("connect {ws_url}"))?;
    let (mut sink, mut stream) = ws.split();
    // Finished updates come back from their timers through this channel.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut sim = SimState {
        image: config.initial_image.clone(),
        sick: false,
        sick_reported: false,
        seq: 0,
    };
    let mut heartbeat = tokio::time::interval(config.heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut welcomed = false;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let Message::Text(text) = msg? else { continue };
                match serde_json::from_str::<RelayFrame>(text.as_str())? {
                    RelayFrame::Hello { challenge, .. } => {
                        let auth = agent::auth_frame(&key, &id, &challenge, flotilla_shared::VERSION);
                        send(&mut sink, &auth).await?;
                    }
                    RelayFrame::Welcome { .. } => {
                        if !welcomed {
                            welcomed = true;
                            stats.connected.fetch_add(1, Ordering::SeqCst);
                        }
                        send(&mut sink, &AgentFrame::Heartbeat(Box::new(sim.heartbeat()))).await?;
                    }
                    RelayFrame::Command(signed) => {
                        stats.commands.fetch_add(1, Ordering::Relaxed);
                        let envelope: CommandEnvelope = serde_json::from_str(&signed.envelope)
                            .context("command envelope")?;
                        send(&mut sink, &AgentFrame::Received { command_id: envelope.id.clone() }).await?;
                        let started_at = Utc::now();
                        match envelope.command {
                            Command::ContainerList(_) => {
                                let output = ContainerListOutput { containers: vec![sim.container()] };
                                let result = CommandResult {
                                    command_id: envelope.id,
                                    status: ResultStatus::Succeeded,
                                    output: Some(serde_json::to_value(output)?),
                                    error: None,
                                    started_at,
                                    finished_at: Utc::now(),
                                };
                                sim.seq += 1;
                                send(&mut sink, &AgentFrame::Outbox { seq: sim.seq, item: OutboxItem::Result(result) }).await?;
                            }
                            Command::ContainerUpdate(args) => {
                                stats.updates.fetch_add(1, Ordering::Relaxed);
                                let done_tx = done_tx.clone();
                                let delay = Duration::from_millis(config.update_ms);
                                tokio::spawn(async move {
                                    flotilla_testkit::hold(delay, "a simulated update takes update_ms").await;
                                    let _ = done_tx.send((envelope.id, args.image));
                                });
                            }
                            _ => {
                                let result = CommandResult {
                                    command_id: envelope.id,
                                    status: ResultStatus::Failed,
                                    output: None,
                                    error: Some(ErrorInfo {
                                        code: "unsupported_by_simulator".into(),
                                        message: "the simulated agent only lists and updates".into(),
                                    }),
                                    started_at,
                                    finished_at: Utc::now(),
                                };
                                sim.seq += 1;
                                send(&mut sink, &AgentFrame::Outbox { seq: sim.seq, item: OutboxItem::Result(result) }).await?;
                            }
                        }
                    }
                    RelayFrame::Ack { .. } => {}
                    RelayFrame::Error { code, message } => bail!("relay error {code}: {message}"),
                }
            }
            Some((command_id, image)) = done_rx.recv() => {
                let result = sim.finish_update(command_id, image, &config);
                sim.seq += 1;
                let failed = result.status != ResultStatus::Succeeded;
                send(&mut sink, &AgentFrame::Outbox { seq: sim.seq, item: OutboxItem::Result(result) }).await?;
                if failed {
                    stats.verdicts.lock().unwrap().push((Utc::now(), id.clone()));
                }
            }
            _ = heartbeat.tick(), if welcomed => {
                send(&mut sink, &AgentFrame::Heartbeat(Box::new(sim.heartbeat()))).await?;
                if sim.sick && !sim.sick_reported {
                    sim.sick_reported = true;
                    stats.verdicts.lock().unwrap().push((Utc::now(), id.clone()));
                }
            }
        }
    }
}

async fn send<S>(sink: &mut S, frame: &AgentFrame) -> Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    sink.send(Message::text(serde_json::to_string(frame)?))
        .await?;
    Ok(())
}

struct SimState {
    image: String,
    /// The container turned unhealthy (a `sick` image).
    sick: bool,
    /// A heartbeat reporting it unhealthy went out (its time is a failing verdict).
    sick_reported: bool,
    seq: u64,
}

impl SimState {
    fn container(&self) -> ContainerInfo {
        ContainerInfo {
            id: "0123456789ab".into(),
            name: SIM_CONTAINER.into(),
            image: self.image.clone(),
            image_id: "sha256:sim".into(),
            state: "running".into(),
            status: "Up".into(),
            health: Some(if self.sick { "unhealthy" } else { "healthy" }.into()),
            restart_count: 0,
            oom_killed: false,
            exit_code: None,
            started_at: None,
            compose_project: None,
            compose_service: None,
            resources: None,
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            at: Utc::now(),
            agent_version: flotilla_shared::VERSION.into(),
            host: HostMetrics {
                hostname: "sim".into(),
                cpu_count: 1,
                memory_total_bytes: 1 << 30,
                memory_used_bytes: 1 << 28,
                ..HostMetrics::default()
            },
            docker: DockerSnapshot {
                version: Some("sim".into()),
                containers: vec![self.container()],
                ..DockerSnapshot::default()
            },
            backup: None,
            compose_drift: Vec::new(),
        }
    }

    fn finish_update(
        &mut self,
        command_id: String,
        image: String,
        config: &SimConfig,
    ) -> CommandResult {
        let failed = image.contains(&config.fail_marker);
        let outcome = if failed {
            UpdateOutcome::RolledBack
        } else {
            UpdateOutcome::Updated
        };
        let report = UpdateReport {
            outcome,
            container: SIM_CONTAINER.into(),
            image: image.clone(),
            strategy: UpdateStrategy::StopFirst,
            health: Default::default(),
            old_container_id: Some("0123456789ab".into()),
            old_image: Some(self.image.clone()),
            old_image_id: Some("sha256:sim".into()),
            old_image_digest: None,
            new_container_id: Some("ba9876543210".into()),
            new_image_id: Some("sha256:sim2".into()),
            new_image_digest: None,
            phase: UpdatePhase::Done,
            timings: Vec::new(),
            health_evidence: None,
            rollback_health_evidence: None,
            reason: failed.then(|| "health check failed (simulated)".to_string()),
            failed_logs: Vec::new(),
            recovered: false,
            old_stopped: true,
            total_ms: config.update_ms,
            compose: None,
        };
        if !failed {
            self.image = image.clone();
            self.sick = image.contains(&config.sick_marker);
            self.sick_reported = false;
        }
        let now = Utc::now();
        CommandResult {
            command_id,
            status: if failed {
                ResultStatus::Failed
            } else {
                ResultStatus::Succeeded
            },
            output: Some(serde_json::to_value(report).expect("report serialises")),
            error: outcome.error_code().map(|code| ErrorInfo {
                code: code.into(),
                message: "health check failed (simulated)".into(),
            }),
            started_at: now,
            finished_at: now,
        }
    }
}
