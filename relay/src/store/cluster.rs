//! The store's facade for several relays on one database: membership, the routing table (which
//! relay holds which agent's connection) and singleton leases. SQL in `sql/cluster.rs`.
//!
//! Fencing: an engine that runs under a lease runs inside [`Fence::scope`]; every store write
//! made in that scope checks, in its own transaction, that the lease still has this holder and
//! epoch, and fails with [`StoreError::Fenced`] otherwise. So a relay that lost its lease
//! (partitioned, paused, slow) cannot write as the singleton even before it notices.

use super::sql::{params, ConnExt};
use super::*;

/// One relay process in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRow {
    pub relay_id: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub version: String,
    /// The address it serves on (for operators; nothing dials it).
    pub address: String,
}

/// An agent's live connection, held by one relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub agent_id: String,
    pub relay_id: String,
    pub connected_at: DateTime<Utc>,
    pub agent_version: String,
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

/// The fencing token of a held lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub epoch: i64,
}

/// What the listener of the relays' notification channel hands on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// (Re)connected and listening: anything sent while it was not may have been missed.
    Connected,
    /// One notification's payload.
    Payload(String),
    /// Nothing arrived for a while (a chance to stop).
    Idle,
    /// The listening connection failed (it reconnects with backoff).
    Broken(String),
}

tokio::task_local! {
    static FENCE: Fence;
}

impl Fence {
    /// Runs `f` with every store write it awaits fenced by this token (tasks it spawns are
    /// not: engines await their writes).
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        FENCE.scope(self, f).await
    }

    /// The fence of the task's current scope, if any.
    pub(super) fn current() -> Option<Fence> {
        FENCE.try_with(Fence::clone).ok()
    }
}

impl Store {
    /// Records that `relay` is alive (inserted on first call; later calls move `seen_at`).
    pub async fn relay_seen(&self, relay: RelayRow) -> Result<(), StoreError> {
        self.write_unfenced(move |c| Sql::relay_seen(c, &relay))
            .await
    }

    pub async fn live_relays(&self, since: DateTime<Utc>) -> Result<Vec<RelayRow>, StoreError> {
        self.read(move |c| Sql::live_relays(c, since)).await
    }

    /// Forgets relays not seen since `before`, and their routes.
    pub async fn forget_dead_relays(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write_unfenced(move |c| Sql::forget_dead_relays(c, before))
            .await
    }

    /// A relay stopping cleanly removes itself and its routes.
    pub async fn relay_left(&self, relay_id: String) -> Result<(), StoreError> {
        self.write_unfenced(move |c| Sql::relay_left(c, &relay_id))
            .await
    }

    pub async fn route_connected(&self, route: Route) -> Result<(), StoreError> {
        self.write_unfenced(move |c| Sql::route_connected(c, &route))
            .await
    }

    pub async fn route_disconnected(
        &self,
        agent_id: String,
        relay_id: String,
        connected_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write_unfenced(move |c| Sql::route_disconnected(c, &agent_id, &relay_id, connected_at))
            .await
    }

    /// The routes recorded through `relay_id`: (agent, connected_at).
    pub async fn own_routes(
        &self,
        relay_id: String,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        self.read(move |c| Sql::own_routes(c, &relay_id)).await
    }

    /// Routes through live relays (seen since `since`) other than `me`.
    pub async fn remote_routes(
        &self,
        me: String,
        since: DateTime<Utc>,
    ) -> Result<Vec<Route>, StoreError> {
        self.read(move |c| Sql::remote_routes(c, &me, since)).await
    }

    /// Queued, unexpired deliveries to the agents routed through `relay_id`:
    /// (command id, signed command, agent id).
    pub async fn queued_for_relay(
        &self,
        relay_id: String,
    ) -> Result<Vec<(String, SignedCommand, String)>, StoreError> {
        let now = now();
        self.read(move |c| Sql::queued_for_relay(c, &relay_id, now))
            .await
    }

    /// An unexpired command and its still-queued targets.
    pub async fn queued_targets(
        &self,
        command_id: String,
    ) -> Result<Option<(SignedCommand, Vec<String>)>, StoreError> {
        let now = now();
        self.read(move |c| Sql::queued_targets(c, &command_id, now))
            .await
    }

    /// The latest heartbeats written since `since`, for relays that did not receive them.
    pub async fn heartbeats_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<HeartbeatWrite>, StoreError> {
        self.read(move |c| Sql::latest_heartbeats(c, Some(since)))
            .await
    }

    /// Takes or renews a lease (see [`Sql::acquire_lease`]): its epoch, or None while another
    /// relay holds it.
    pub async fn acquire_lease(
        &self,
        name: String,
        holder: String,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        self.write_unfenced(move |c| Sql::acquire_lease(c, &name, &holder, now, expires_at))
            .await
    }

    pub async fn release_lease(&self, name: String, holder: String) -> Result<(), StoreError> {
        self.write_unfenced(move |c| Sql::release_lease(c, &name, &holder))
            .await
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.read(Sql::leases).await
    }

    /// On PostgreSQL, starts a thread that listens on the relays' notification channel and
    /// hands every [`Notice`] to `deliver` until it returns false; None on SQLite (one relay,
    /// nobody to hear from).
    pub fn spawn_listener(
        &self,
        mut deliver: impl FnMut(Notice) -> bool + Send + 'static,
    ) -> Option<std::thread::JoinHandle<()>> {
        if !matches!(&*self.backend, Backend::Postgres(_)) {
            return None;
        }
        let backend = self.backend.clone();
        Some(
            std::thread::Builder::new()
                .name("relay-listen".into())
                .spawn(move || {
                    if let Backend::Postgres(b) = &*backend {
                        b.listen(&mut deliver);
                    }
                })
                .expect("spawn the listener thread"),
        )
    }

    /// Sends each payload on the relays' notification channel, in one transaction (a no-op on
    /// SQLite). PostgreSQL limits a payload to 8000 bytes; the caller keeps them smaller.
    pub async fn notify(&self, payloads: Vec<String>) -> Result<(), StoreError> {
        if !matches!(&*self.backend, Backend::Postgres(_)) {
            return Ok(());
        }
        self.write_unfenced(move |c| {
            for p in &payloads {
                c.query_row(
                    "SELECT 1 FROM (SELECT pg_notify(?1, ?2)) n",
                    params![postgres::CHANNEL, p],
                    |_| Ok(()),
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Whether several relays can share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(&*self.backend, Backend::Postgres(_))
    }
}
