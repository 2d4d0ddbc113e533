//! The HTTP and websocket adapters' state: configuration, store, hub, signing key, counters and
//! the handles of the services and engines they call. Only the adapters (`api`, `ws`) and the
//! composition root (`server`) take it; an engine gets a struct of exactly what it uses.

use crate::commands::Commands;
use crate::config::RelayConfig;
use crate::heartbeats::HeartbeatCache;
use crate::hub::{encode, Hub};
use crate::jobs::JobEngine;
use crate::metrics::{Gauges, Metrics};
use crate::ratelimit::RateLimiter;
use crate::rollouts::RolloutKicker;
use crate::store::Store;
use flotilla_shared::protocol::{RelayFrame, SignedWelcome, WelcomeBody};
use flotilla_shared::selector::Labels;
use flotilla_shared::signing::SigningKey;
use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

pub struct Shared {
    pub config: RelayConfig,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub key: Arc<SigningKey>,
    pub fingerprint: String,
    pub metrics: Arc<Metrics>,
    pub heartbeats: Arc<HeartbeatCache>,
    /// Issuing, signing and finishing commands; its completions drive `?wait=` and the engines.
    pub commands: Commands,
    /// A job's first dispatch happens when the API creates it; later ones on completions.
    pub jobs: JobEngine,
    /// Publishing and marking agent builds.
    pub releases: crate::releases::Releases,
    /// Wakes the rollout engine (`crate::rollouts`).
    pub rollouts: RolloutKicker,
    pub enroll_limiter: Arc<RateLimiter>,
    /// Dashboard sign-in attempts per client address (`web::login`).
    pub login_limiter: Arc<RateLimiter>,
    /// Agent websockets that have not authenticated yet, in all and per client address
    /// (`max_pending_handshakes`, `max_pending_handshakes_per_address`).
    pub handshakes: Arc<crate::ratelimit::handshakes::PendingHandshakes>,
    /// The API's per-token and per-address rate limits (`api/limits.rs`).
    pub api_limits: crate::ratelimit::ApiLimits,
    pub shutdown: CancellationToken,
    /// Set once the store is open and the background tasks run (`GET /readyz`).
    pub ready: AtomicBool,
    /// The alerts engine's shared parts (TLS check cache, evaluate-now kick).
    pub alerts: Arc<crate::alerts::AlertsHandle>,
    /// The live event bus (`GET /api/v1/events/stream`); engines hold their own `Arc` of it.
    pub stream: Arc<crate::stream::EventBus>,
    /// This relay's place among the relays sharing the store (`crate::cluster`).
    pub cluster: crate::cluster::Cluster,
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
            stream_clients: self.stream.subscribers(),
        }
    }
}
