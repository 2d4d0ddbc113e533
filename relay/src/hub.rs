//! Who is connected right now: agent id → the handle of its one live websocket.
//!
//! A handle is a bounded channel of pre-serialised frames into the connection's task, so sending
//! to many agents serialises a frame once and clones a cheap reference-counted buffer. The map is
//! behind a `std::sync::Mutex` that is never held across an `.await` (only `try_send` happens
//! under it). Every connection has a generation number, so a connection that was replaced by a
//! newer one cannot unregister its successor when it ends.

use chrono::{DateTime, Utc};
use flotilla_shared::protocol::{error_codes, RelayFrame};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Frames queued per connection before the connection counts as stuck.
pub const CONNECTION_QUEUE: usize = 64;

/// Serialises a relay frame once, into the form every connection can share.
pub fn encode(frame: &RelayFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).expect("relay frames serialise"))
}

/// What the hub asks a connection task to do.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Utf8Bytes),
}

/// The hub's side of one connection.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub generation: u64,
    pub connected_at: DateTime<Utc>,
    /// The version the agent announced when this connection authenticated (empty if unknown).
    pub agent_version: String,
    tx: mpsc::Sender<Outgoing>,
    /// Cancelled to make the connection write what is queued, close and end.
    close: CancellationToken,
}

impl ConnectionHandle {
    fn try_send(&self, frame: Utf8Bytes) -> bool {
        match self.tx.try_send(Outgoing::Frame(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The peer does not read fast enough: drop the link; everything unfinished is
                // re-sent when it reconnects.
                tracing::warn!("agent connection queue is full; closing the connection");
                self.close.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn close_with_error(&self, code: &str, message: &str) {
        let frame = encode(&RelayFrame::Error {
            code: code.to_string(),
            message: message.to_string(),
        });
        let _ = self.tx.try_send(Outgoing::Frame(frame));
        self.close.cancel();
    }
}

/// What a new connection gets when it registers.
pub struct Registration {
    pub generation: u64,
    pub connected_at: DateTime<Utc>,
    pub rx: mpsc::Receiver<Outgoing>,
    pub close: CancellationToken,
}

/// An agent connected to another relay of the cluster (see `crate::cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConnection {
    pub relay_id: String,
    pub connected_at: DateTime<Utc>,
    pub agent_version: String,
}

#[derive(Default)]
pub struct Hub {
    connections: Mutex<HashMap<String, ConnectionHandle>>,
    /// Agents whose connection another relay holds (empty with one relay). Presence questions
    /// (`is_connected`, `connected_at`, `agent_version`, `connected_count`) see both maps;
    /// sending and the metrics snapshot only this relay's own connections.
    remote: Mutex<HashMap<String, RemoteConnection>>,
    next_generation: AtomicU64,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ConnectionHandle>> {
        // The map stays consistent even if a holder panicked (every update is one insert or
        // remove), so a poisoned lock is safe to keep using.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, HashMap<String, RemoteConnection>> {
        // Same reasoning as `lock`: every update is one insert, remove or swap.
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Another relay now holds this agent's connection.
    pub fn remote_connected(&self, agent_id: &str, connection: RemoteConnection) {
        self.remote().insert(agent_id.to_string(), connection);
    }

    /// The agent's connection to another relay (the one that started at `connected_at`) ended.
    pub fn remote_disconnected(&self, agent_id: &str, connected_at: DateTime<Utc>) {
        let mut remote = self.remote();
        if remote.get(agent_id).map(|r| r.connected_at) == Some(connected_at) {
            remote.remove(agent_id);
        }
    }

    /// Replaces what is known of other relays' connections (a periodic re-read of the routing
    /// table, which repairs any missed announcement).
    pub fn set_remote(&self, connections: HashMap<String, RemoteConnection>) {
        *self.remote() = connections;
    }

    /// Registers the live connection of an agent. An older connection of the same agent is told
    /// `replaced_by_new_connection` and closed.
    pub fn register(&self, agent_id: &str) -> Registration {
        self.register_with_version(agent_id, "")
    }

    /// [`Hub::register`], remembering the version the agent announced on this connection
    /// (see [`Hub::agent_version`]).
    pub fn register_with_version(&self, agent_id: &str, agent_version: &str) -> Registration {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let close = CancellationToken::new();
        let connected_at = crate::store::now();
        let handle = ConnectionHandle {
            generation,
            connected_at,
            agent_version: agent_version.to_string(),
            tx,
            close: close.clone(),
        };
        let old = self.lock().insert(agent_id.to_string(), handle);
        if let Some(old) = old {
            tracing::info!(
                agent_id,
                "agent reconnected; closing its previous connection"
            );
            old.close_with_error(
                error_codes::REPLACED,
                "a newer connection of this agent replaced this one",
            );
        }
        Registration {
            generation,
            connected_at,
            rx,
            close,
        }
    }

    /// Removes the agent's entry if it still belongs to this connection.
    pub fn unregister(&self, agent_id: &str, generation: u64) {
        let mut map = self.lock();
        if map.get(agent_id).map(|h| h.generation) == Some(generation) {
            map.remove(agent_id);
        }
    }

    /// Queues a frame for one agent; false when it is not connected (or its queue is stuck).
    pub fn send(&self, agent_id: &str, frame: Utf8Bytes) -> bool {
        let handle = self.lock().get(agent_id).cloned();
        handle.is_some_and(|h| h.try_send(frame))
    }

    /// Queues one frame for many agents; returns the agents it was queued for.
    pub fn send_many<'a>(
        &self,
        agent_ids: impl IntoIterator<Item = &'a String>,
        frame: &Utf8Bytes,
    ) -> Vec<String> {
        let handles: Vec<(String, ConnectionHandle)> = {
            let map = self.lock();
            agent_ids
                .into_iter()
                .filter_map(|a| map.get(a).map(|h| (a.clone(), h.clone())))
                .collect()
        };
        handles
            .into_iter()
            .filter(|(_, h)| h.try_send(frame.clone()))
            .map(|(a, _)| a)
            .collect()
    }

    /// Sends an error frame to the agent's connection, closes it and forgets it.
    pub fn disconnect(&self, agent_id: &str, code: &str, message: &str) -> bool {
        let handle = self.lock().remove(agent_id);
        match handle {
            Some(h) => {
                h.close_with_error(code, message);
                true
            }
            None => false,
        }
    }

    /// Closes every connection this relay holds (each told `code` and `message`); returns how
    /// many.
    pub fn disconnect_all(&self, code: &str, message: &str) -> usize {
        let handles: Vec<ConnectionHandle> = self.lock().drain().map(|(_, h)| h).collect();
        for h in &handles {
            h.close_with_error(code, message);
        }
        handles.len()
    }

    /// Whether this relay holds the agent's connection.
    pub fn is_local(&self, agent_id: &str) -> bool {
        self.lock().contains_key(agent_id)
    }

    /// Whether the agent is connected to this relay or another of the cluster.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.is_local(agent_id) || self.remote().contains_key(agent_id)
    }

    pub fn connected_at(&self, agent_id: &str) -> Option<DateTime<Utc>> {
        let local = self.lock().get(agent_id).map(|h| h.connected_at);
        local.or_else(|| self.remote().get(agent_id).map(|r| r.connected_at))
    }

    /// The version a connected agent announced when its live connection authenticated: what
    /// the running process is, unlike the stored column, which a heartbeat flushed late (sent by
    /// the previous process) can overwrite. None when not connected or not announced.
    pub fn agent_version(&self, agent_id: &str) -> Option<String> {
        let local = self.lock().get(agent_id).map(|h| h.agent_version.clone());
        local
            .or_else(|| self.remote().get(agent_id).map(|r| r.agent_version.clone()))
            .filter(|v| !v.is_empty())
    }

    /// Agents connected to this relay or another of the cluster (each counted once).
    pub fn connected_count(&self) -> usize {
        let local = self.lock();
        let remote = self.remote();
        local.len() + remote.keys().filter(|a| !local.contains_key(*a)).count()
    }

    /// Agents connected to this relay.
    pub fn local_count(&self) -> usize {
        self.lock().len()
    }

    /// Every agent connected to this relay: (agent, connection start, announced version).
    pub fn local_connections(&self) -> Vec<(String, DateTime<Utc>, String)> {
        self.lock()
            .iter()
            .map(|(a, h)| (a.clone(), h.connected_at, h.agent_version.clone()))
            .collect()
    }

    /// Every agent connected to this relay with the time its connection started.
    pub fn snapshot(&self) -> Vec<(String, DateTime<Utc>)> {
        self.lock()
            .iter()
            .map(|(a, h)| (a.clone(), h.connected_at))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replacement_and_generations() {
        let hub = Hub::new();
        let mut first = hub.register("ag_1");
        let second = hub.register("ag_1");
        // The first connection is told why and asked to close.
        let Some(Outgoing::Frame(f)) = first.rx.recv().await else {
            panic!("no frame")
        };
        assert!(f.as_str().contains(error_codes::REPLACED), "{f}");
        assert!(first.close.is_cancelled());
        // The old connection ending does not unregister the new one.
        hub.unregister("ag_1", first.generation);
        assert!(hub.is_connected("ag_1"));
        hub.unregister("ag_1", second.generation);
        assert!(!hub.is_connected("ag_1"));
    }

    #[tokio::test]
    async fn send_many_shares_one_buffer() {
        let hub = Hub::new();
        let mut a = hub.register("a");
        let mut b = hub.register("b");
        let frame = encode(&RelayFrame::Ack { seq: 1 });
        let ids = ["a".to_string(), "b".to_string(), "c".to_string()];
        let sent = hub.send_many(ids.iter(), &frame);
        assert_eq!(sent, vec!["a".to_string(), "b".to_string()]);
        for r in [&mut a.rx, &mut b.rx] {
            let Some(Outgoing::Frame(f)) = r.recv().await else {
                panic!("no frame")
            };
            assert_eq!(f, frame);
        }
    }
}
