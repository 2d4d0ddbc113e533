//! The commands service: the one place that gives a command its expiry, signs it with the
//! relay's key, persists it before anything is sent, sends it to the connected agents and
//! announces that a delivery ended.
//!
//! Engines and API handlers hold a [`Commands`] (cheap to clone) instead of the whole app
//! state. A delivery's end is published as a [`Completion`] on a broadcast channel: `?wait=`
//! requests and the jobs and rollout engines subscribe to it, so nothing here names an engine.
//! A subscriber that falls behind (`RecvError::Lagged`) must re-read what it follows from the
//! store; the engines do (they re-scan every running job or active rollout).

use crate::config::MAX_COMMAND_TTL_SECS;
use crate::hub::{encode, Hub};
use crate::metrics::Metrics;
use crate::store::{Finalised, NewCommand, Store, StoreError, UpdateEnded};
use chrono::{DateTime, Utc};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::{Audience, Command, CommandEnvelope, SignedCommand};
use flotilla_shared::protocol::RelayFrame;
use flotilla_shared::signing::SigningKey;
use flotilla_shared::stream::EventKind;
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many completions a slow subscriber may fall behind before it is told it lagged.
const COMPLETIONS_CAPACITY: usize = 1024;

/// A delivery reached a final state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub command_id: String,
    pub agent_id: String,
    /// The fan-out job the delivery belongs to, if any.
    pub job_id: Option<String>,
    pub state: DeliveryState,
}

impl From<&Finalised> for Completion {
    fn from(f: &Finalised) -> Completion {
        Completion {
            command_id: f.command_id.clone(),
            agent_id: f.agent_id.clone(),
            job_id: f.job_id.clone(),
            state: f.state,
        }
    }
}

/// A TTL outside 1 s ..= 7 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ttl_secs must be between 1 and {MAX_COMMAND_TTL_SECS} (7 days)")]
pub struct TtlOutOfRange;

/// Why [`Commands::issue`] failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    InvalidTtl(#[from] TtlOutOfRange),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues, signs, sends and finishes commands. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    store: Store,
    hub: Arc<Hub>,
    key: Arc<SigningKey>,
    metrics: Arc<Metrics>,
    default_ttl_secs: u64,
    completions: broadcast::Sender<Completion>,
    /// Every completion is also a `command.finished` on the live event stream.
    stream: Arc<crate::stream::EventBus>,
    /// The other relays sharing the store: told about dispatches to agents not connected
    /// here and about every completion (see `crate::cluster`).
    cluster: crate::cluster::Cluster,
}

impl Commands {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        key: Arc<SigningKey>,
        metrics: Arc<Metrics>,
        default_ttl_secs: u64,
    ) -> Commands {
        let (completions, _) = broadcast::channel(COMPLETIONS_CAPACITY);
        Commands {
            store,
            hub,
            key,
            metrics,
            default_ttl_secs,
            completions,
            stream: Arc::default(),
            cluster: crate::cluster::Cluster::single(),
        }
    }

    /// Tells `cluster`'s other relays about dispatches and completions.
    pub fn with_cluster(mut self, cluster: crate::cluster::Cluster) -> Commands {
        self.cluster = cluster;
        self
    }

    /// Publishes completions on `stream` (the relay's bus) too.
    pub fn with_stream(mut self, stream: Arc<crate::stream::EventBus>) -> Commands {
        self.stream = stream;
        self
    }

    /// The live event bus this service publishes on (the engines that apply their decisions
    /// through this service publish theirs there too).
    pub fn stream(&self) -> &crate::stream::EventBus {
        &self.stream
    }

    /// Completions from now on (subscribe before issuing what you wait for).
    pub fn subscribe(&self) -> broadcast::Receiver<Completion> {
        self.completions.subscribe()
    }

    /// Bookkeeping after a delivery became final: the outcome counter and the announcement to
    /// waiters and engines.
    pub fn finished(&self, completion: Completion) {
        self.metrics.command_outcome(completion.state);
        let c = &completion;
        let summary = format!(
            "command {} on agent {}: {}",
            c.command_id,
            c.agent_id,
            c.state.as_str()
        );
        let data = serde_json::json!({ "state": c.state.as_str(), "job_id": c.job_id });
        (self.stream).publish(
            EventKind::CommandFinished,
            Some(&c.agent_id),
            Some(&c.command_id),
            summary,
            Some(data),
        );
        self.cluster.signal(crate::cluster::Signal::Finished {
            command_id: completion.command_id.clone(),
            agent_id: completion.agent_id.clone(),
            job_id: completion.job_id.clone(),
            state: completion.state,
        });
        // No receivers is normal (nobody waits, and the engines may have stopped at shutdown).
        let _ = self.completions.send(completion);
    }

    /// A completion another relay stored and announced: for this relay's waiters and engines
    /// (its event is forwarded on its own, and its outcome counted where it happened).
    pub fn remote_finished(&self, completion: Completion) {
        let _ = self.completions.send(completion);
    }

    /// [`Commands::finished`] for every delivery the store just ended (and
    /// [`Commands::update_finished`] for the update rows the ending finished).
    pub fn all_finished(&self, ended: &[Finalised]) {
        for f in ended {
            if let Some(update) = &f.update {
                self.update_finished(&f.command_id, &f.agent_id, update);
            }
            self.finished(Completion::from(f));
        }
    }

    /// Announces that a container update's history row reached its final outcome (the store
    /// said so: [`UpdateEnded`] comes back from the transaction that wrote it).
    pub fn update_finished(&self, command_id: &str, agent_id: &str, update: &UpdateEnded) {
        let summary = format!(
            "update {command_id} on agent {agent_id} to {}: {}{}",
            update.image,
            update.outcome,
            if update.replaced {
                " (the agent's late result corrects the relay's ending)"
            } else {
                ""
            }
        );
        let data = serde_json::json!({
            "outcome": update.outcome,
            "image": update.image,
            "replaced": update.replaced,
        });
        (self.stream).publish(
            EventKind::UpdateFinished,
            Some(agent_id),
            Some(command_id),
            summary,
            Some(data),
        );
    }

    /// When a command issued at `issued_at` expires. Without a TTL: the relay's default, except
    /// that a `container.update` gets at least its run budget and `backup.run`/`backup.restore`
    /// at least six hours, times `waves` (a job's targets run that many after one another under
    /// max-concurrency; 1 for a single command), see [`crate::model::ttl`],
    /// so no delivery ends while an agent may still be working on it.
    pub fn expiry(
        &self,
        ttl_secs: Option<u64>,
        command: &Command,
        waves: u64,
        issued_at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, TtlOutOfRange> {
        let default = self.default_ttl_secs;
        let ttl =
            ttl_secs.unwrap_or_else(|| crate::model::ttl::default_for(command, default, waves));
        if !(1..=MAX_COMMAND_TTL_SECS).contains(&ttl) {
            return Err(TtlOutOfRange);
        }
        Ok(issued_at + chrono::Duration::seconds(ttl as i64))
    }

    /// A command signed with the relay's key for `audience`.
    pub fn sign(
        &self,
        id: &str,
        audience: Audience,
        command: &Command,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> SignedCommand {
        SignedCommand::sign(
            &CommandEnvelope {
                id: id.to_string(),
                audience,
                command: command.clone(),
                issued_at,
                expires_at,
            },
            &self.key,
        )
    }

    /// A command to one agent, signed for it (audience the agent) and ready to persist: one
    /// queued delivery.
    pub fn new_agent_command(
        &self,
        command_id: &str,
        agent_id: &str,
        command: Command,
        ttl_secs: Option<u64>,
        created_by: &str,
    ) -> Result<NewCommand, TtlOutOfRange> {
        let issued_at = crate::store::now();
        let expires_at = self.expiry(ttl_secs, &command, 1, issued_at)?;
        let audience = Audience::Agent {
            agent_id: agent_id.to_string(),
        };
        let signed = self.sign(
            command_id,
            audience.clone(),
            &command,
            issued_at,
            expires_at,
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
    pub async fn issue(
        &self,
        command_id: &str,
        agent_id: &str,
        command: Command,
        ttl_secs: Option<u64>,
        created_by: &str,
    ) -> Result<(), IssueError> {
        let c = self.new_agent_command(command_id, agent_id, command, ttl_secs, created_by)?;
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
        if n < agent_ids.len() {
            // The others may be connected to another relay: it sends to its own.
            self.cluster.signal(crate::cluster::Signal::Dispatch {
                command_id: command_id.to_string(),
            });
        }
        if n > 0 {
            self.store.mark_sent(command_id.to_string(), sent).await?;
        }
        Ok(n)
    }

    /// Sends a stored command to those of its still-queued targets that are connected to this
    /// relay (another relay dispatched it, or a wake-up was lost). Returns how many it sent.
    pub async fn dispatch_queued(&self, command_id: &str) -> Result<usize, StoreError> {
        let Some((signed, queued)) = self.store.queued_targets(command_id.to_string()).await?
        else {
            return Ok(0);
        };
        let local: Vec<String> = queued
            .into_iter()
            .filter(|a| self.hub.is_local(a))
            .collect();
        if local.is_empty() {
            return Ok(0);
        }
        let frame = encode(&RelayFrame::Command(signed));
        let sent = self.hub.send_many(local.iter(), &frame);
        let n = sent.len();
        if n > 0 {
            self.store.mark_sent(command_id.to_string(), sent).await?;
        }
        Ok(n)
    }
}
