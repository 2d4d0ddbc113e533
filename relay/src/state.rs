//! What every part of the running relay shares: configuration, store, hub, signing key, counters,
//! and the few operations that several parts perform (finishing a delivery, dispatching a signed
//! command to connected agents, signing a welcome).

use crate::config::RelayConfig;
use crate::heartbeats::HeartbeatCache;
use crate::hub::{encode, Hub};
use crate::jobs::JobKicker;
use crate::metrics::{Gauges, Metrics};
use crate::ratelimit::RateLimiter;
use crate::store::{Store, StoreError};
use axum::extract::ws::Utf8Bytes;
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::SignedCommand;
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

pub struct Shared {
    pub config: RelayConfig,
    pub store: Store,
    pub hub: Hub,
    pub key: SigningKey,
    pub fingerprint: String,
    pub metrics: Metrics,
    pub heartbeats: Arc<HeartbeatCache>,
    pub jobs: JobKicker,
    pub completions: broadcast::Sender<Completion>,
    pub enroll_limiter: RateLimiter,
    /// One permit per agent websocket that has not authenticated yet
    /// (`max_pending_handshakes`).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    pub shutdown: CancellationToken,
    /// Set once the store is open and the background tasks run (`GET /readyz`).
    pub ready: AtomicBool,
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
