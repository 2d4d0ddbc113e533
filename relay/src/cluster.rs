//! Several relays on one PostgreSQL database: what each relay tells the others, who holds which
//! agent's connection, and which relay runs each singleton engine.
//!
//! The background side (sender, listener, membership and resync loops) is `crate::peers`.
//!
//! - **Signals** ([`Signal`]) go out on PostgreSQL's LISTEN/NOTIFY channel, small (ids, one
//!   event, one completion; never a command's body, which the receiver reads from the store),
//!   batched per transaction, best effort. Whatever a lost signal would have done is repaired
//!   by the periodic resync: the routing table is re-read, and queued deliveries to this
//!   relay's agents are sent ([`RESYNC_INTERVAL`]).
//! - **Routing**: a relay records each agent connection it holds in `agent_routes` and
//!   announces it; every relay keeps the others' connections in its hub, so presence
//!   (`connected`, versions, counts) is the fleet's, whichever relay answers. A relay not seen
//!   for [`DEAD_AFTER`] is forgotten with its routes.
//! - **Leases** ([`run_singleton`]): each singleton engine runs on one relay at a time under a
//!   lease with an epoch, renewed every [`RENEW_INTERVAL`] for [`LEASE_TTL`]. Its holder stops
//!   acting [`LEASE_MARGIN`] before the lease could be taken over (clocks may differ by less),
//!   and every store write the engine makes is fenced by the epoch
//!   ([`crate::store::Fence`]), so a stale holder's writes are refused by the database.
//!
//! With SQLite (one relay) there is no link: [`Cluster::single`] drops every signal and
//! [`run_singleton`] just runs the engine.

use crate::store::{Fence, Route, Store};
use chrono::{DateTime, Utc};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::stream::FleetEvent;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a relay records that it is alive.
pub const SEEN_INTERVAL: Duration = Duration::from_secs(2);
/// A relay not seen for this long is dead: its routes go, its agents count as disconnected.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// How often the routing table is re-read and queued deliveries re-sent.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// A lease lasts this long after each renewal ...
pub const LEASE_TTL: Duration = Duration::from_secs(12);
/// ... which happens this often ...
pub const RENEW_INTERVAL: Duration = Duration::from_secs(3);
/// ... and its holder stops acting this long before it runs out (tolerated clock skew).
pub const LEASE_MARGIN: Duration = Duration::from_secs(4);
/// Signals queued for sending before new ones are dropped (the resync repairs what is lost).
pub(crate) const OUTBOX: usize = 8192;
/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;

/// What one relay tells the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Signal {
    /// A command has queued deliveries to agents that are not connected to the sender.
    Dispatch { command_id: String },
    /// A delivery ended (for `?wait=` and the engines elsewhere).
    Finished {
        command_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        state: DeliveryState,
    },
    /// An event of the live stream.
    Event { event: FleetEvent },
    /// The sender now holds this agent's connection.
    Connected {
        agent_id: String,
        connected_at: DateTime<Utc>,
        agent_version: String,
    },
    /// The sender's connection of this agent ended.
    Disconnected {
        agent_id: String,
        connected_at: DateTime<Utc>,
    },
    /// Close this agent's connection wherever it is (it was revoked).
    Disconnect {
        agent_id: String,
        code: String,
        message: String,
    },
    /// Wake the rollout engine, wherever it runs.
    KickRollouts,
    /// Evaluate alerts now, wherever that runs.
    KickAlerts,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub from: String,
    #[serde(flatten)]
    pub signal: Signal,
}

/// This relay's place in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    relay_id: String,
    /// None with one relay (SQLite): nobody to tell.
    out: Option<mpsc::Sender<Signal>>,
    store: Option<Store>,
    /// Set while this relay cannot reach the shared database (see [`Cluster::stepped_down`]).
    stepped_down: std::sync::atomic::AtomicBool,
    /// Set for good once the database was migrated to a schema this relay must not write to
    /// (see [`Cluster::retired`]).
    retired: std::sync::OnceLock<String>,
}

impl Cluster {
    /// A relay alone on its store: signals go nowhere.
    pub fn single() -> Cluster {
        Cluster {
            inner: Arc::new(Inner {
                relay_id: flotilla_shared::ids::new_id("relay"),
                out: None,
                store: None,
                stepped_down: Default::default(),
                retired: Default::default(),
            }),
        }
    }

    /// This relay on `store`: linked to the others when the store is shared (PostgreSQL). The
    /// receiver is the outbox `crate::peers::ClusterTasks::start` sends from.
    pub fn new(store: &Store) -> (Cluster, Option<mpsc::Receiver<Signal>>) {
        if !store.is_shared() {
            return (Cluster::single(), None);
        }
        let (tx, rx) = mpsc::channel(OUTBOX);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                relay_id: flotilla_shared::ids::new_id("relay"),
                out: Some(tx),
                store: Some(store.clone()),
                stepped_down: Default::default(),
                retired: Default::default(),
            }),
        };
        (cluster, Some(rx))
    }

    /// This relay process's id (new at every start).
    pub fn relay_id(&self) -> &str {
        &self.inner.relay_id
    }

    /// Whether other relays may share the store.
    pub fn is_shared(&self) -> bool {
        self.inner.out.is_some()
    }

    /// Whether this relay stepped down: cut off from the shared database for longer than its
    /// leases could last, it answers `/readyz` 503, refuses agent connections (closing the
    /// ones it had, so agents move to a healthy relay) and lets its engines stop. It serves
    /// again on its own once the database answers.
    ///
    /// A retired relay ([`Cluster::retired`]) is stepped down for good.
    pub fn stepped_down(&self) -> bool {
        self.inner
            .stepped_down
            .load(std::sync::atomic::Ordering::Acquire)
            || self.retired().is_some()
    }

    /// Why this relay retired, if it did: a newer relay migrated the shared database to a
    /// schema this one must not write to (a rolling upgrade past what it can run on). It
    /// steps down as when cut off, until it is replaced by the newer build.
    pub fn retired(&self) -> Option<&str> {
        self.inner.retired.get().map(String::as_str)
    }

    /// Retires this relay (see [`Cluster::retired`]); false when it already was.
    pub(crate) fn retire(&self, why: String) -> bool {
        self.inner.retired.set(why).is_ok()
    }

    /// Why this relay refuses to serve, for an answer: None while it serves.
    pub fn step_down_reason(&self) -> Option<(&'static str, String)> {
        if let Some(why) = self.retired() {
            return Some((
                "schema_too_new",
                format!("this relay stepped down: {why}; another relay serves"),
            ));
        }
        self.stepped_down().then(|| {
            (
                "stepped_down",
                "the relay cannot reach its database and stepped down; another relay serves"
                    .to_string(),
            )
        })
    }

    pub(crate) fn set_stepped_down(&self, down: bool) -> bool {
        self.inner
            .stepped_down
            .swap(down, std::sync::atomic::Ordering::AcqRel)
    }

    /// Tells the other relays; never waits. Dropped (and logged) if the outbox is full.
    pub fn signal(&self, signal: Signal) {
        let Some(out) = &self.inner.out else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = out.try_send(signal) {
            tracing::warn!("cluster outbox full; a signal to the other relays was dropped (the next resync repairs it)");
        }
    }

    /// This relay now holds the agent's connection: recorded in the routing table, announced.
    pub async fn connected(&self, agent_id: &str, connected_at: DateTime<Utc>, version: &str) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let route = Route {
            agent_id: agent_id.to_string(),
            relay_id: self.relay_id().to_string(),
            connected_at,
            agent_version: version.to_string(),
        };
        if let Err(e) = store.route_connected(route).await {
            tracing::warn!(agent_id, error = %e, "cannot record the agent's route");
        }
        self.signal(Signal::Connected {
            agent_id: agent_id.to_string(),
            connected_at,
            agent_version: version.to_string(),
        });
    }

    /// The connection that started at `connected_at` ended.
    pub async fn disconnected(&self, agent_id: &str, connected_at: DateTime<Utc>) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let removed = store
            .route_disconnected(
                agent_id.to_string(),
                self.relay_id().to_string(),
                connected_at,
            )
            .await;
        if let Err(e) = removed {
            tracing::warn!(agent_id, error = %e, "cannot remove the agent's route");
        }
        self.signal(Signal::Disconnected {
            agent_id: agent_id.to_string(),
            connected_at,
        });
    }
}

/// The payload of one signal, within PostgreSQL's limit: an event too big to travel whole
/// travels without its data; anything else too big is not sent.
pub(crate) fn encode(from: &str, signal: Signal) -> Option<String> {
    let text = serde_json::to_string(&Envelope {
        from: from.to_string(),
        signal: signal.clone(),
    })
    .ok()?;
    if text.len() <= MAX_PAYLOAD {
        return Some(text);
    }
    match signal {
        Signal::Event { mut event } => {
            event.data = None;
            let text = serde_json::to_string(&Envelope {
                from: from.to_string(),
                signal: Signal::Event { event },
            })
            .ok()?;
            (text.len() <= MAX_PAYLOAD).then_some(text)
        }
        other => {
            tracing::warn!(?other, "signal too large for the cluster channel; not sent");
            None
        }
    }
}

/// A singleton engine's lease: its name, and what taking it needs.
pub struct Lease {
    pub cluster: Cluster,
    pub store: Store,
    pub name: &'static str,
    /// The relay's shutdown: the engine stops and the lease is handed over.
    pub shutdown: CancellationToken,
}

/// Runs a singleton engine: at once with one relay; with several, only while this relay holds
/// the lease `name`, every store write inside fenced by its epoch. `start` makes a fresh run
/// of the engine, which must end when its token is cancelled.
pub async fn run_singleton<F, Fut>(lease: Lease, mut start: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Lease {
        cluster,
        store,
        name,
        shutdown,
    } = lease;
    if !cluster.is_shared() {
        start(shutdown).await;
        return;
    }
    let me = cluster.relay_id().to_string();
    let mut running: Option<(i64, CancellationToken, JoinHandle<()>)> = None;
    // Until when this relay may act on the lease (from the last successful renewal).
    let mut held_until = Instant::now();
    let mut tick = tokio::time::interval(RENEW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if cluster.stepped_down() {
            // Stepped down: it must not act, whatever the database would grant it (a retired
            // relay still reaches the database). A retired relay hands the lease over at once.
            if running.is_some() {
                tracing::warn!(
                    lease = name,
                    "stepped down; stopping the {name} engine here"
                );
                stop_run(name, running.take()).await;
                if cluster.retired().is_some() {
                    let _ = store.release_lease(name.to_string(), me.clone()).await;
                }
            }
            continue;
        }
        let asked = Instant::now();
        let now = crate::store::now();
        let until = now + chrono::Duration::from_std(LEASE_TTL).unwrap_or_default();
        let outcome = tokio::time::timeout(
            RENEW_INTERVAL,
            store.acquire_lease(name.to_string(), me.clone(), now, until),
        )
        .await;
        let epoch = match outcome {
            Ok(Ok(Some(epoch))) => {
                held_until = asked + LEASE_TTL - LEASE_MARGIN;
                Some(epoch)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!(lease = name, error = %e, "cannot renew the lease");
                running
                    .as_ref()
                    .map(|r| r.0)
                    .filter(|_| Instant::now() < held_until)
            }
            Err(_) => {
                tracing::warn!(lease = name, "renewing the lease timed out");
                running
                    .as_ref()
                    .map(|r| r.0)
                    .filter(|_| Instant::now() < held_until)
            }
        };
        if running.as_ref().is_some_and(|r| r.2.is_finished()) {
            if let Some((e, token, handle)) = running.take() {
                match handle.await {
                    // It panicked: run it again below while the lease is held.
                    Err(err) => {
                        tracing::error!(lease = name, error = %err, "the {name} engine failed; starting it again")
                    }
                    // It chose to end (e.g. disabled): keep the lease, do not restart it.
                    Ok(()) => {
                        let idle = token.clone();
                        running = Some((
                            e,
                            token,
                            tokio::spawn(async move { idle.cancelled().await }),
                        ));
                    }
                }
            }
        }
        match (epoch, &running) {
            (Some(e), Some((current, _, _))) if e == *current => {}
            (Some(e), _) => {
                stop_run(name, running.take()).await;
                tracing::info!(
                    lease = name,
                    epoch = e,
                    "this relay now runs the {name} engine"
                );
                let token = shutdown.child_token();
                let fence = Fence {
                    lease: name.to_string(),
                    holder: me.clone(),
                    epoch: e,
                };
                let run = tokio::spawn(fence.scope(start(token.clone())));
                running = Some((e, token, run));
            }
            (None, Some(_)) => {
                tracing::warn!(lease = name, "lease lost; stopping the {name} engine here");
                stop_run(name, running.take()).await;
            }
            (None, None) => {}
        }
    }
    let was_running = running.is_some();
    stop_run(name, running.take()).await;
    if was_running {
        // Handing over at once instead of letting the lease run out.
        let _ = store.release_lease(name.to_string(), me).await;
    }
}

async fn stop_run(name: &str, run: Option<(i64, CancellationToken, JoinHandle<()>)>) {
    let Some((_, token, handle)) = run else {
        return;
    };
    token.cancel();
    if let Err(e) = handle.await {
        tracing::error!(lease = name, error = %e, "the {name} engine ended badly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_oversized_events_lose_their_data() {
        let s = Signal::Dispatch {
            command_id: "cmd_1".into(),
        };
        let text = encode("relay_a", s.clone()).expect("small signal");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!((back.from.as_str(), back.signal), ("relay_a", s));

        let event = FleetEvent {
            id: 7,
            at: Utc::now(),
            kind: "agent.connected".into(),
            agent_id: Some("ag_1".into()),
            subject: None,
            summary: "agent connected".into(),
            data: Some(serde_json::json!({ "big": "x".repeat(10_000) })),
        };
        let text = encode("relay_a", Signal::Event { event }).expect("sent without data");
        assert!(text.len() <= MAX_PAYLOAD);
        let back: Envelope = serde_json::from_str(&text).unwrap();
        let Signal::Event { event } = back.signal else {
            panic!("not an event")
        };
        assert_eq!(event.data, None);
        assert_eq!(event.summary, "agent connected");
    }
}
