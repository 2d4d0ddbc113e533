//! What every part of the running relay shares: configuration, store, hub, signing key, counters,
//! and the few operations that several parts perform (finishing a delivery, dispatching a signed
//! command to connected agents, signing a welcome).

use crate::config::RelayConfig;
use crate::heartbeats::HeartbeatCache;
use crate::hub::{encode, Hub};
use crate::jobs::JobKicker;
use crate::metrics::{Gauges, Metrics};
use crate::ratelimit::RateLimiter;
use crate::rollouts::RolloutKicker;
use crate::store::{NewCommand, Store, StoreError};
use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::{Audience, Command, CommandEnvelope, SignedCommand};
use flotilla_shared::protocol::{RelayFrame, SignedWelcome, WelcomeBody};
use flotilla_shared::selector::Labels;
use flotilla_shared::signing::SigningKey;
use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A delivery reached a final state (announced to `?wait=` requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub command_id: String,
    pub agent_id: String,
}

/// Why [`Shared::issue_command`] failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The TTL is out of range (the message says the range).
    #[error("{0}")]
    InvalidTtl(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Shared {
    pub config: RelayConfig,
    pub store: Store,
    pub hub: Hub,
    pub key: SigningKey,
    pub fingerprint: String,
    pub metrics: Metrics,
    pub heartbeats: Arc<HeartbeatCache>,
    pub jobs: JobKicker,
    /// Wakes the rollout engine (`crate::rollouts`).
    pub rollouts: RolloutKicker,
    pub completions: broadcast::Sender<Completion>,
    pub enroll_limiter: RateLimiter,
    /// One permit per agent websocket that has not authenticated yet
    /// (`max_pending_handshakes`).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    pub shutdown: CancellationToken,
    /// Set once the store is open and the background tasks run (`GET /readyz`).
    pub ready: AtomicBool,
    /// The alerts engine's shared parts (TLS check cache, evaluate-now kick).
    pub alerts: crate::alerts::AlertsHandle,
}

/// Cheap handle to [`Shared`], the axum state.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// Bookkeeping after a delivery became final: counters, waiters, and its job's dispatch.
    pub fn delivery_finished(
        &self,
        command_id: &str,
        agent_id: &str,
        job_id: Option<&str>,
        state: DeliveryState,
    ) {
        self.metrics.command_outcome(state);
        // No receivers is normal (nobody waits).
        let _ = self.completions.send(Completion {
            command_id: command_id.to_string(),
            agent_id: agent_id.to_string(),
        });
        if let Some(job_id) = job_id {
            self.jobs.kick(job_id);
        }
        self.rollouts.delivery_finished(command_id);
    }

    /// When a command issued now expires. Without a TTL: the relay's default, except that a
    /// `container.update` gets at least its run budget and `backup.run`/`backup.restore` at
    /// least six hours, times `waves` (a job's targets run that many after one another under
    /// max-concurrency; 1 for a single command), see [`crate::updates`] and
    /// [`crate::backups`], so no delivery ends while an agent may still be working on it.
    /// Err names a TTL out of range.
    pub fn command_expiry(
        &self,
        ttl_secs: Option<u64>,
        command: &Command,
        waves: u64,
        issued_at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, String> {
        let default = self.config.default_command_ttl_secs;
        let ttl = ttl_secs.unwrap_or(match command {
            Command::ContainerUpdate(args) => {
                crate::updates::default_ttl_secs(args, default, waves)
            }
            c if flotilla_shared::command::is_long(c) => {
                crate::backups::default_ttl_secs(default, waves)
            }
            _ => default,
        });
        if !(1..=crate::config::MAX_COMMAND_TTL_SECS).contains(&ttl) {
            return Err(format!(
                "ttl_secs must be between 1 and {} (7 days)",
                crate::config::MAX_COMMAND_TTL_SECS
            ));
        }
        Ok(issued_at + chrono::Duration::seconds(ttl as i64))
    }

    /// A command to one agent, signed for it (audience the agent) and ready to persist: one
    /// queued delivery. Err names a TTL out of range.
    pub fn new_agent_command(
        &self,
        command_id: &str,
        agent_id: &str,
        command: Command,
        ttl_secs: Option<u64>,
        created_by: &str,
    ) -> Result<NewCommand, String> {
        let issued_at = crate::store::now();
        let expires_at = self.command_expiry(ttl_secs, &command, 1, issued_at)?;
        let audience = Audience::Agent {
            agent_id: agent_id.to_string(),
        };
        let signed = SignedCommand::sign(
            &CommandEnvelope {
                id: command_id.to_string(),
                audience: audience.clone(),
                command: command.clone(),
                issued_at,
                expires_at,
            },
            &self.key,
        );
        Ok(NewCommand {
            id: command_id.to_string(),
            command,
            signed,
            audience,
            created_at: issued_at,
            expires_at,
            created_by: created_by.to_string(),
            job_id: None,
            targets: vec![(agent_id.to_string(), DeliveryState::Queued)],
        })
    }

    /// Issues one signed command to one agent: persisted (before anything is sent, so a relay
    /// crash after sending cannot lose it), then sent if the agent is connected. What
    /// `POST /api/v1/agents/{id}/commands` does after its checks.
    pub async fn issue_command(
        &self,
        command_id: &str,
        agent_id: &str,
        command: Command,
        ttl_secs: Option<u64>,
        created_by: &str,
    ) -> Result<(), IssueError> {
        let c = self
            .new_agent_command(command_id, agent_id, command, ttl_secs, created_by)
            .map_err(IssueError::InvalidTtl)?;
        let signed = c.signed.clone();
        self.store.create_command(c).await?;
        self.dispatch(command_id, &signed, &[agent_id.to_string()])
            .await?;
        Ok(())
    }

    /// Sends a signed command to those of `agent_ids` that are connected (serialised once) and
    /// records them as sent. The others stay queued until they connect.
    pub async fn dispatch(
        &self,
        command_id: &str,
        signed: &SignedCommand,
        agent_ids: &[String],
    ) -> Result<usize, StoreError> {
        let frame = encode(&RelayFrame::Command(signed.clone()));
        let sent = self.hub.send_many(agent_ids.iter(), &frame);
        let n = sent.len();
        if n > 0 {
            self.store.mark_sent(command_id.to_string(), sent).await?;
        }
        Ok(n)
    }

    /// A freshly signed welcome for an agent.
    pub fn welcome_frame(&self, agent_id: &str, labels: &Labels) -> Utf8Bytes {
        let body = WelcomeBody {
            agent_id: agent_id.to_string(),
            labels: labels.clone(),
            issued_at: crate::store::now(),
        };
        encode(&RelayFrame::Welcome {
            welcome: SignedWelcome::sign(&body, &self.key),
            heartbeat_interval_secs: self.config.heartbeat_interval_secs,
            max_frame_bytes: Some(self.config.max_frame_bytes),
        })
    }

    /// Live figures for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let now = chrono::Utc::now();
        let connected = self.hub.snapshot();
        let lag = connected
            .iter()
            .map(|(agent_id, connected_at)| {
                let last = self
                    .heartbeats
                    .received_at(agent_id)
                    .filter(|t| t >= connected_at)
                    .unwrap_or(*connected_at);
                (now - last).num_milliseconds().max(0) as f64 / 1000.0
            })
            .fold(0.0, f64::max);
        Gauges {
            connected_agents: connected.len(),
            heartbeat_lag_secs: lag,
        }
    }
}
