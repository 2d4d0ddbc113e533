//! The link to the other relays sharing the database (see `crate::cluster` for the design):
//! the sender of this relay's signals, the listener that applies the others', and the
//! membership loop (alive marks, dead relays forgotten, the periodic resync of routes, queued
//! deliveries and heartbeats).

use crate::cluster::{
    encode, Cluster, Envelope, Signal, DEAD_AFTER, LEASE_MARGIN, LEASE_TTL, OUTBOX,
    RESYNC_INTERVAL, SEEN_INTERVAL,
};
use crate::commands::{Commands, Completion};
use crate::hub::{Hub, RemoteConnection};
use crate::store::{Notice, RelayRow, Store};
use crate::stream::EventBus;
use chrono::{DateTime, Utc};
use flotilla_shared::stream::FleetEvent;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The parts the cluster's background tasks act on.
pub struct ClusterTasks {
    pub cluster: Cluster,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub commands: Commands,
    pub stream: Arc<EventBus>,
    pub heartbeats: Arc<crate::heartbeats::HeartbeatCache>,
    pub rollouts: crate::rollouts::RolloutKicker,
    pub alerts: Arc<crate::alerts::AlertsHandle>,
    /// Where this relay serves (shown in the relays table).
    pub address: String,
}

impl ClusterTasks {
    /// Starts the sender, the listener and the membership loop; nothing with one relay.
    pub fn start(
        self,
        outbox: Option<mpsc::Receiver<Signal>>,
        shutdown: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let Some(outbox) = outbox else {
            return Vec::new();
        };
        let me = self.cluster.relay_id().to_string();
        // Everything published on this relay's bus reaches the others' streams.
        let forward = self.cluster.clone();
        self.stream.forward_to(Box::new(move |e: &FleetEvent| {
            forward.signal(Signal::Event { event: e.clone() });
        }));
        let mut tasks = vec![tokio::spawn(send_loop(
            self.store.clone(),
            me.clone(),
            outbox,
            shutdown.clone(),
        ))];
        let (heard_tx, heard) = mpsc::channel::<Notice>(OUTBOX);
        let stop = shutdown.clone();
        // The listener thread ends at its next idle moment after shutdown.
        let _ = self.store.spawn_listener(move |notice| {
            !stop.is_cancelled() && heard_tx.blocking_send(notice).is_ok()
        });
        let this = Arc::new(self);
        tasks.push(tokio::spawn(
            this.clone().apply_loop(heard, shutdown.clone()),
        ));
        tasks.push(tokio::spawn(this.membership_loop(shutdown)));
        tasks
    }

    async fn apply_loop(
        self: Arc<Self>,
        mut heard: mpsc::Receiver<Notice>,
        stop: CancellationToken,
    ) {
        let me = self.cluster.relay_id().to_string();
        loop {
            let notice = tokio::select! {
                _ = stop.cancelled() => return,
                n = heard.recv() => match n { Some(n) => n, None => return },
            };
            match notice {
                Notice::Payload(text) => match serde_json::from_str::<Envelope>(&text) {
                    Ok(e) if e.from == me => {}
                    Ok(e) => self.apply(e.from, e.signal).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed signal on the cluster channel; ignored")
                    }
                },
                Notice::Connected => {
                    tracing::info!("listening to the other relays");
                    // Anything sent while not listening is repaired by a resync now.
                    self.resync().await;
                }
                Notice::Idle => {}
                Notice::Broken(e) => {
                    tracing::warn!(error = %e, "cluster channel lost; reconnecting");
                }
            }
        }
    }

    async fn apply(&self, from: String, signal: Signal) {
        match signal {
            Signal::Dispatch { command_id } => {
                if let Err(e) = self.commands.dispatch_queued(&command_id).await {
                    tracing::warn!(%command_id, error = %e, "cannot dispatch a command another relay issued");
                }
            }
            Signal::Finished {
                command_id,
                agent_id,
                job_id,
                state,
            } => self.commands.remote_finished(Completion {
                command_id,
                agent_id,
                job_id,
                state,
            }),
            Signal::Event { event } => {
                self.stream.publish_remote(event);
            }
            Signal::Connected {
                agent_id,
                connected_at,
                agent_version,
            } => {
                if self
                    .hub
                    .connected_at(&agent_id)
                    .is_some_and(|t| t < connected_at && self.hub.is_local(&agent_id))
                {
                    // It reconnected elsewhere: the connection here is a dead one.
                    self.hub.disconnect(
                        &agent_id,
                        flotilla_shared::protocol::error_codes::REPLACED,
                        "a newer connection of this agent (to another relay) replaced this one",
                    );
                }
                self.hub.remote_connected(
                    &agent_id,
                    RemoteConnection {
                        relay_id: from,
                        connected_at,
                        agent_version,
                    },
                );
            }
            Signal::Disconnected {
                agent_id,
                connected_at,
            } => self.hub.remote_disconnected(&agent_id, connected_at),
            Signal::Disconnect {
                agent_id,
                code,
                message,
            } => {
                self.hub.disconnect(&agent_id, &code, &message);
            }
            Signal::KickRollouts => self.rollouts.kick(),
            Signal::KickAlerts => self.alerts.kick.notify_one(),
        }
    }

    /// Makes the routing table say what this relay's hub holds: a route written or removed
    /// while the database was unreachable (best effort at connect and disconnect) is repaired.
    async fn repair_own_routes(&self) {
        let me = self.cluster.relay_id().to_string();
        let recorded: HashMap<String, DateTime<Utc>> = match self.store.own_routes(me.clone()).await
        {
            Ok(r) => r.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this relay's routes");
                return;
            }
        };
        let live = self.hub.local_connections();
        let mut repaired = 0;
        for (agent_id, connected_at, agent_version) in &live {
            if recorded.get(agent_id) != Some(connected_at) {
                let route = crate::store::Route {
                    agent_id: agent_id.clone(),
                    relay_id: me.clone(),
                    connected_at: *connected_at,
                    agent_version: agent_version.clone(),
                };
                if self.store.route_connected(route).await.is_ok() {
                    repaired += 1;
                }
            }
        }
        let held: std::collections::HashSet<&String> = live.iter().map(|(a, _, _)| a).collect();
        for (agent_id, connected_at) in &recorded {
            if !held.contains(agent_id) {
                let gone = self
                    .store
                    .route_disconnected(agent_id.clone(), me.clone(), *connected_at)
                    .await;
                if gone.is_ok() {
                    repaired += 1;
                }
            }
        }
        if repaired > 0 {
            tracing::info!(
                routes = repaired,
                "repaired this relay's routes in the routing table"
            );
        }
    }

    /// Re-reads the others' connections and sends what is still queued for this relay's
    /// agents: the repair for any lost signal.
    async fn resync(&self) {
        self.repair_own_routes().await;
        let since =
            crate::store::now() - chrono::Duration::from_std(DEAD_AFTER).unwrap_or_default();
        match self
            .store
            .remote_routes(self.cluster.relay_id().to_string(), since)
            .await
        {
            Ok(routes) => self.hub.set_remote(
                routes
                    .into_iter()
                    .map(|r| {
                        (
                            r.agent_id,
                            RemoteConnection {
                                relay_id: r.relay_id,
                                connected_at: r.connected_at,
                                agent_version: r.agent_version,
                            },
                        )
                    })
                    .collect::<HashMap<_, _>>(),
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the routing table"),
        }
        match self
            .store
            .queued_for_relay(self.cluster.relay_id().to_string())
            .await
        {
            Ok(queued) => {
                let mut ids: Vec<String> = queued.into_iter().map(|(id, _, _)| id).collect();
                ids.dedup();
                for id in ids {
                    if let Err(e) = self.commands.dispatch_queued(&id).await {
                        tracing::warn!(command_id = %id, error = %e, "cannot send a queued command");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read queued deliveries"),
        }
    }

    /// Takes the heartbeats the other relays wrote since `since`.
    async fn merge_heartbeats(&self, since: DateTime<Utc>) {
        match self.store.heartbeats_since(since).await {
            Ok(written) => self.heartbeats.merge(written),
            Err(e) => tracing::warn!(error = %e, "cannot read the other relays' heartbeats"),
        }
    }

    /// Closes the agent connections of a retired relay (any that reached it meanwhile too).
    fn close_retired(&self) {
        let closed = self.hub.disconnect_all(
            "relay_unavailable",
            "this relay is older than its database's schema; reconnect to another relay",
        );
        if closed > 0 {
            tracing::warn!(
                agents = closed,
                "closed agent connections of a retired relay"
            );
        }
    }

    async fn membership_loop(self: Arc<Self>, stop: CancellationToken) {
        let me = self.cluster.relay_id().to_string();
        let started_at = crate::store::now();
        let mut seen = tokio::time::interval(SEEN_INTERVAL);
        seen.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resync = Instant::now();
        let mut last_ok = Instant::now();
        // Heartbeats reach the database up to a flush interval after they arrive, stamped
        // with the receiving relay's clock: read back far enough to cover both.
        let overlap = chrono::Duration::from_std(
            crate::heartbeats::FLUSH_INTERVAL + RESYNC_INTERVAL + LEASE_MARGIN,
        )
        .unwrap_or_default();
        let mut heartbeats_read = started_at;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = seen.tick() => {}
            }
            if self.cluster.retired().is_some() {
                // Retired for good: out of the cluster (no more liveness), and no agent stays.
                self.close_retired();
                continue;
            }
            let now = crate::store::now();
            let row = RelayRow {
                relay_id: me.clone(),
                started_at,
                seen_at: now,
                version: env!("CARGO_PKG_VERSION").to_string(),
                address: self.address.clone(),
            };
            // Never waits past the step-down point: a write hanging on a dead link must not
            // delay the step-down beyond the lease (a partition drops packets, it does not
            // close sockets).
            let step_down_in = (LEASE_TTL - LEASE_MARGIN).saturating_sub(last_ok.elapsed());
            let wait = step_down_in.clamp(Duration::from_millis(500), SEEN_INTERVAL * 2);
            let mut seen_ok = false;
            match tokio::time::timeout(wait, self.store.relay_seen(row)).await {
                Ok(Ok(())) => {
                    seen_ok = true;
                    last_ok = Instant::now();
                    if self.cluster.set_stepped_down(false) {
                        tracing::warn!("the database answers again; this relay serves again");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot record this relay as alive"),
                Err(_) => tracing::warn!("recording this relay as alive timed out"),
            }
            // A newer relay may have migrated the database past what this one can write to (a
            // rolling upgrade): then it retires for good.
            if seen_ok && self.cluster.retired().is_none() {
                match tokio::time::timeout(wait, self.store.check_schema()).await {
                    Ok(Err(e @ crate::store::StoreError::TooNew { .. })) => {
                        tracing::error!(
                            error = %e,
                            "the database was migrated by a newer relay to a schema this relay \
                             must not write to: stepping down for good (readyz 503, writes \
                             refused, agent connections closed, engines stopped); replace this \
                             relay with the newer build"
                        );
                        self.cluster.retire(e.to_string());
                        // The others stop counting this relay and its agents at once.
                        if let Err(e) = self.store.relay_left(me.clone()).await {
                            tracing::warn!(error = %e, "cannot remove this relay from the relays table");
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the database's schema"),
                    Ok(Ok(())) | Err(_) => {}
                }
            }
            if self.cluster.retired().is_some() {
                self.close_retired();
                continue;
            }
            if last_ok.elapsed() > LEASE_TTL - LEASE_MARGIN {
                if !self.cluster.set_stepped_down(true) {
                    tracing::error!(
                        "cut off from the database for {:?}: stepping down (readyz 503, agent connections closed, engines stop with their leases)",
                        last_ok.elapsed()
                    );
                }
                // Agents go to a relay that can serve them (and any that connected meanwhile).
                let closed = self.hub.disconnect_all(
                    "relay_unavailable",
                    "this relay lost its database; reconnect to another relay",
                );
                if closed > 0 {
                    tracing::warn!(
                        agents = closed,
                        "closed agent connections while stepped down"
                    );
                }
                continue;
            }
            // The resync reads the same database: not while it does not answer.
            if seen_ok && last_resync.elapsed() >= RESYNC_INTERVAL {
                last_resync = Instant::now();
                let dead = now - chrono::Duration::from_std(DEAD_AFTER).unwrap_or_default();
                // Bounded: on a link that stopped answering (a partition drops packets, it does
                // not close sockets) an unbounded read here would stall this loop, and with it
                // the liveness check above: the relay would never step down.
                let step = async {
                    match self.store.forget_dead_relays(dead).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(
                            relays = n,
                            "relays not seen for {DEAD_AFTER:?} forgotten with their agents' routes"
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot forget dead relays"),
                    }
                    self.resync().await;
                    self.merge_heartbeats(heartbeats_read - overlap).await;
                };
                match tokio::time::timeout(RESYNC_INTERVAL, step).await {
                    Ok(()) => heartbeats_read = now,
                    Err(_) => tracing::warn!(
                        "the resync did not finish within {RESYNC_INTERVAL:?}; trying again later"
                    ),
                }
            }
        }
        // Leaving on purpose: the others stop counting this relay's agents at once.
        if let Err(e) = self.store.relay_left(me).await {
            tracing::warn!(error = %e, "cannot remove this relay from the relays table");
        }
    }
}

/// Sends queued signals, as many as are waiting in one transaction, until shutdown (then what
/// is queued, once). The outbox's senders live as long as the relay's state, so the loop ends
/// on the token, not on a closed channel.
async fn send_loop(
    store: Store,
    me: String,
    mut outbox: mpsc::Receiver<Signal>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let got = tokio::select! {
            _ = shutdown.cancelled() => {
                while let Ok(s) = outbox.try_recv() {
                    batch.push(s);
                }
                0
            }
            n = outbox.recv_many(&mut batch, 256) => n,
        };
        let payloads: Vec<String> = batch.drain(..).filter_map(|s| encode(&me, s)).collect();
        if !payloads.is_empty() {
            if let Err(e) = store.notify(payloads).await {
                tracing::warn!(error = %e, "cannot signal the other relays (the next resync repairs it)");
            }
        }
        if got == 0 {
            return;
        }
    }
}
