//! Lifecycle notifications: one relay task subscribes to the live event bus
//! ([`crate::stream::EventBus`]) and turns fleet events into [`LifecycleEvent`]s for the
//! channels whose `events` list them, written to the same durable outbox as alert
//! notifications ([`Notifier::queue_lifecycle`]), so they share its retries, backoff and
//! restarts.
//!
//! | lifecycle event    | from the bus                                                        |
//! |--------------------|---------------------------------------------------------------------|
//! | `agent.enrolled`   | `agent.enrolled`                                                    |
//! | `agent.revoked`    | `agent.revoked`                                                     |
//! | `agent.offline`    | `agent.disconnected`, when the agent is still not connected after the offline grace |
//! | `update.finished`  | `update.finished` (data: `outcome`, `image`)                        |
//! | `rollout.finished` | `rollout.transition` into a final state (completed, aborted, reverted) |
//! | `backup.failed`    | `backup.reported` with `state = "failed"`                           |
//!
//! **Why `agent.offline` waits.** A disconnect alone is mostly noise: an agent restarting for
//! an upgrade, a relay restart (every agent reconnects), a network blip all disconnect and
//! reconnect within seconds. So a disconnect only becomes `agent.offline` once the agent has
//! stayed away for the alerts' unreachable grace (`heartbeat_interval_secs` ×
//! `alerts.unreachable_intervals`, [`crate::alerts::unreachable_after`]), the same time after
//! which `agent_unreachable` considers it gone; a reconnect in between (seen on the bus, and
//! checked again against the hub when the grace ends, since an old connection's disconnect can
//! be published after its replacement connected) cancels it, as does a revocation (that sends
//! `agent.revoked`; the revoked agent's own disconnect, published after it, is ignored). The pending disconnects live in this task's memory only: a relay restart
//! forgets them.
//!
//! **Never blocking the relay.** The task reads the bus like any stream client: when it falls
//! more than the bus's client queue behind, the broadcast skips it forward (the "reset" of a
//! stream client); the events it missed are lost for notification, logged as a warning and
//! counted in `flotilla_lifecycle_events_lost_total`. Once written to the outbox an event
//! survives restarts; what the bus skipped, or a crash before the write, is lost. A store
//! write that fails loses that event (logged).

use super::{Notifier, NotifyEvent};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::stream::{EventBus, Filter};
use chrono::{DateTime, Utc};
use flotilla_shared::backup::BackupStatus;
use flotilla_shared::rollout::RolloutState;
use flotilla_shared::stream::{EventKind, FleetEvent};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One lifecycle notification: the generic webhook's body is exactly this, serialised, in the
/// Standard Webhooks payload shape `{"type", "timestamp", "data"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LifecycleEvent {
    /// `agent.enrolled`, `agent.offline`, ... (also `X-Flotilla-Event`).
    #[serde(rename = "type")]
    pub kind: NotifyEvent,
    /// When it happened: the fleet event's time (for `agent.offline`: when the grace ended).
    pub timestamp: DateTime<Utc>,
    /// The fleet event's fields (`event_id`, `kind`, `at`, `agent_id`, `subject`, `summary`)
    /// and the fields of its `data` (e.g. `outcome` and `image` of an update).
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The fleet event's id, for the delivery id.
    #[serde(skip)]
    source_id: u64,
}

impl LifecycleEvent {
    /// `kind` decided from `event` at `timestamp`.
    pub fn new(kind: NotifyEvent, event: &FleetEvent, timestamp: DateTime<Utc>) -> Self {
        use serde_json::Value;
        let mut data = serde_json::Map::new();
        data.insert("event_id".into(), Value::from(event.id));
        data.insert("kind".into(), Value::from(event.kind.clone()));
        data.insert("at".into(), Value::from(event.at.to_rfc3339()));
        if let Some(agent_id) = &event.agent_id {
            data.insert("agent_id".into(), Value::from(agent_id.clone()));
        }
        if let Some(subject) = &event.subject {
            data.insert("subject".into(), Value::from(subject.clone()));
        }
        data.insert("summary".into(), Value::from(event.summary.clone()));
        if let Some(Value::Object(fields)) = &event.data {
            for (k, v) in fields {
                data.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        LifecycleEvent {
            kind,
            timestamp,
            data,
            source_id: event.id,
        }
    }

    /// `X-Flotilla-Delivery` / `webhook-id`: `evt_<fleet event id>.<event>`, fixed when the
    /// event is queued, so the same on every retry (fleet event ids grow from the relay's
    /// start time in microseconds, so they do not repeat across restarts in practice).
    pub fn delivery_id(&self) -> String {
        format!("evt_{}.{}", self.source_id, self.kind)
    }
}

/// The lifecycle event a fleet event is at once, if any (`agent.offline` is decided later).
pub fn immediate(event: &FleetEvent) -> Option<NotifyEvent> {
    let state = || {
        event
            .data
            .as_ref()
            .and_then(|d| d.get("state"))
            .and_then(|s| s.as_str())
    };
    match EventKind::parse(&event.kind)? {
        EventKind::AgentEnrolled => Some(NotifyEvent::AgentEnrolled),
        EventKind::AgentRevoked => Some(NotifyEvent::AgentRevoked),
        EventKind::UpdateFinished => Some(NotifyEvent::UpdateFinished),
        EventKind::RolloutTransition => state()
            .and_then(RolloutState::parse)
            .is_some_and(RolloutState::is_final)
            .then_some(NotifyEvent::RolloutFinished),
        EventKind::BackupReported => {
            (state() == Some(BackupStatus::Failed.as_str())).then_some(NotifyEvent::BackupFailed)
        }
        _ => None,
    }
}

/// Disconnects waiting for their grace to end (see the module doc). Every grace is the same
/// length, so deadlines come in arrival order: a queue in that order gives the next deadline
/// and the due ones without scanning (a mass disconnect of many thousand agents costs O(1)
/// per event), and the map says which queued entry is still the agent's live one.
#[derive(Default)]
struct PendingOffline {
    /// Agent id → its (first) disconnect's event id and the event.
    agents: HashMap<String, Arc<FleetEvent>>,
    /// (grace end, agent id, event id) in arrival order; entries whose agent came back (or
    /// disconnected again later) are skipped when they reach the front.
    queue: VecDeque<(Instant, String, u64)>,
    /// Agents revoked recently (until their grace ended): their disconnect (published by the
    /// connection task after the revocation closed it) is not an `agent.offline`.
    revoked: HashMap<String, Instant>,
    /// Size of `revoked` at which `revoked()` next drops expired entries (amortised O(1), so
    /// revoking many agents while none disconnects keeps it bounded too).
    prune_revoked_at: usize,
}

impl PendingOffline {
    fn disconnected(&mut self, event: Arc<FleetEvent>, deadline: Instant) {
        if let Some(agent_id) = event.agent_id.clone() {
            if self.revoked.contains_key(&agent_id) || self.agents.contains_key(&agent_id) {
                return;
            }
            self.queue.push_back((deadline, agent_id.clone(), event.id));
            self.agents.insert(agent_id, event);
        }
    }

    fn back(&mut self, agent_id: &str) {
        self.agents.remove(agent_id);
    }

    /// `until`: when a late disconnect of the revoked agent can no longer come.
    fn revoked(&mut self, agent_id: &str, until: Instant) {
        self.agents.remove(agent_id);
        if self.revoked.len() >= self.prune_revoked_at {
            let now = Instant::now();
            self.revoked.retain(|_, u| *u > now);
            self.prune_revoked_at = (self.revoked.len() * 2).max(1024);
        }
        self.revoked.insert(agent_id.to_string(), until);
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale_front();
        self.queue.front().map(|(at, _, _)| *at)
    }

    /// Pops queue entries that are no longer their agent's pending disconnect.
    fn drop_stale_front(&mut self) {
        while let Some((_, agent_id, event_id)) = self.queue.front() {
            if self.agents.get(agent_id).is_some_and(|e| e.id == *event_id) {
                return;
            }
            self.queue.pop_front();
        }
    }

    /// The disconnects whose grace ended by `now`, of agents still not `connected`; forgets
    /// revocations older than their grace.
    fn due(&mut self, now: Instant, connected: impl Fn(&str) -> bool) -> Vec<Arc<FleetEvent>> {
        self.revoked.retain(|_, until| *until > now);
        let mut due = Vec::new();
        loop {
            self.drop_stale_front();
            match self.queue.front() {
                Some((at, _, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, agent_id, _)) = self.queue.pop_front() else {
                break;
            };
            if let Some(e) = self.agents.remove(&agent_id) {
                if !connected(&agent_id) {
                    due.push(e);
                }
            }
        }
        due
    }
}

/// The bus subscriber (see the module doc). Made before the relay serves, so it sees
/// everything published from the first request on.
pub struct LifecycleTask {
    live: broadcast::Receiver<Arc<FleetEvent>>,
    notifier: Notifier,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    offline_grace: Duration,
    pending: PendingOffline,
}

impl LifecycleTask {
    pub fn new(
        bus: &EventBus,
        notifier: Notifier,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        offline_grace: Duration,
    ) -> Self {
        LifecycleTask {
            live: bus.subscribe(None, &Filter::default()).live,
            notifier,
            hub,
            metrics,
            offline_grace,
            pending: PendingOffline::default(),
        }
    }

    /// Reads the bus until shutdown (or until the bus is gone).
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let deadline = self.pending.next_deadline();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                () = sleep_until(deadline) => self.fire_due().await,
                next = self.live.recv() => match next {
                    Ok(event) => self.handle(event).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.metrics.lifecycle_events_lost(missed);
                        tracing::warn!(
                            missed,
                            "lifecycle notifications fell behind the event bus; the events \
                             they missed are not notified"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        if !self.pending.agents.is_empty() {
            tracing::debug!(
                pending = self.pending.agents.len(),
                "relay shutting down: pending agent.offline notifications forgotten"
            );
        }
    }

    async fn handle(&mut self, event: Arc<FleetEvent>) {
        if let Some(kind) = immediate(&event) {
            if kind == NotifyEvent::AgentRevoked {
                if let Some(agent_id) = &event.agent_id {
                    self.pending
                        .revoked(agent_id, Instant::now() + self.offline_grace);
                }
            }
            if self.notifier.wants(kind) {
                self.queue(LifecycleEvent::new(kind, &event, event.at))
                    .await;
            }
            return;
        }
        if !self.notifier.wants(NotifyEvent::AgentOffline) {
            return;
        }
        if event.kind == EventKind::AgentDisconnected.as_str() {
            self.pending
                .disconnected(event, Instant::now() + self.offline_grace);
        } else if event.kind == EventKind::AgentConnected.as_str() {
            if let Some(agent_id) = &event.agent_id {
                self.pending.back(agent_id);
            }
        }
    }

    async fn fire_due(&mut self) {
        let hub = &self.hub;
        let due = self
            .pending
            .due(Instant::now(), |agent_id| hub.is_connected(agent_id));
        for event in due {
            self.queue(LifecycleEvent::new(
                NotifyEvent::AgentOffline,
                &event,
                Utc::now(),
            ))
            .await;
        }
    }

    /// Writes one event to the outbox (a failure loses it, logged).
    async fn queue(&self, event: LifecycleEvent) {
        let delivery_id = event.delivery_id();
        if let Err(e) = self.notifier.queue_lifecycle(event).await {
            tracing::warn!(
                %delivery_id,
                error = %e,
                "cannot write a lifecycle notification to the outbox; it is not notified"
            );
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: u64, kind: EventKind, data: Option<serde_json::Value>) -> FleetEvent {
        FleetEvent {
            id,
            at: "2026-01-02T03:04:05Z".parse().unwrap(),
            kind: kind.as_str().into(),
            agent_id: Some("agt_1".into()),
            subject: Some("subj".into()),
            summary: "something happened".into(),
            data,
        }
    }

    #[test]
    fn fleet_events_map_to_lifecycle_events() {
        let check = |kind, data, expected| {
            assert_eq!(immediate(&event(1, kind, data)), expected, "{kind:?}");
        };
        check(
            EventKind::AgentEnrolled,
            None,
            Some(NotifyEvent::AgentEnrolled),
        );
        check(
            EventKind::AgentRevoked,
            None,
            Some(NotifyEvent::AgentRevoked),
        );
        check(
            EventKind::UpdateFinished,
            Some(json!({"outcome": "succeeded", "image": "x:1"})),
            Some(NotifyEvent::UpdateFinished),
        );
        for state in RolloutState::ALL {
            let expected = state.is_final().then_some(NotifyEvent::RolloutFinished);
            check(
                EventKind::RolloutTransition,
                Some(json!({"state": state.as_str(), "action": "x"})),
                expected,
            );
        }
        check(
            EventKind::BackupReported,
            Some(json!({"state": "failed", "key": "db"})),
            Some(NotifyEvent::BackupFailed),
        );
        check(
            EventKind::BackupReported,
            Some(json!({"state": "success", "key": "db"})),
            None,
        );
        for kind in [
            EventKind::AgentConnected,
            EventKind::AgentDisconnected,
            EventKind::AgentHeartbeat,
            EventKind::CommandFinished,
            EventKind::JobFinished,
            EventKind::AlertFiring,
        ] {
            check(kind, None, None);
        }
    }

    #[test]
    fn the_body_is_type_timestamp_and_the_events_fields() {
        let e = event(
            42,
            EventKind::UpdateFinished,
            Some(json!({"outcome": "rolled_back", "image": "web:2", "summary": "not this"})),
        );
        let l = LifecycleEvent::new(NotifyEvent::UpdateFinished, &e, e.at);
        assert_eq!(l.delivery_id(), "evt_42.update.finished");
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({
                "type": "update.finished",
                "timestamp": "2026-01-02T03:04:05Z",
                "data": {
                    "event_id": 42,
                    "kind": "update.finished",
                    "at": "2026-01-02T03:04:05+00:00",
                    "agent_id": "agt_1",
                    "subject": "subj",
                    "summary": "something happened",
                    "outcome": "rolled_back",
                    "image": "web:2",
                }
            })
        );
    }

    #[test]
    fn offline_waits_for_the_grace_and_a_reconnect_cancels_it() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(180);
        let mut p = PendingOffline::default();
        let mut second = event(2, EventKind::AgentDisconnected, None);
        second.agent_id = Some("agt_2".into());
        p.disconnected(
            Arc::new(event(1, EventKind::AgentDisconnected, None)),
            t0 + grace,
        );
        p.disconnected(Arc::new(second), t0 + grace + Duration::from_secs(5));
        // A second disconnect of the same agent keeps the first deadline.
        p.disconnected(
            Arc::new(event(3, EventKind::AgentDisconnected, None)),
            t0 + grace * 2,
        );
        assert_eq!(p.next_deadline(), Some(t0 + grace));
        assert!(p
            .due(t0 + grace - Duration::from_secs(1), |_| false)
            .is_empty());
        let due = p.due(t0 + grace, |_| false);
        assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), [1]);
        // agt_2 reconnected, but its old connection's disconnect came later: the hub decides.
        let due = p.due(t0 + grace * 2, |id| id == "agt_2");
        assert!(due.is_empty());
        assert_eq!(p.next_deadline(), None);
        // A reconnect seen on the bus cancels.
        p.disconnected(Arc::new(event(4, EventKind::AgentDisconnected, None)), t0);
        p.back("agt_1");
        assert!(p.due(t0 + grace, |_| false).is_empty());
        // A revoked agent's disconnect (published after the revocation) is not an offline.
        p.disconnected(Arc::new(event(5, EventKind::AgentDisconnected, None)), t0);
        p.revoked("agt_1", t0 + grace);
        p.disconnected(Arc::new(event(6, EventKind::AgentDisconnected, None)), t0);
        assert!(p.due(t0 + grace, |_| false).is_empty());
        // Past its grace the revocation is forgotten (the set stays bounded).
        assert!(p.revoked.is_empty());
    }

    #[test]
    fn a_mass_disconnect_is_served_in_order_without_scans() {
        let t0 = Instant::now();
        let mut p = PendingOffline::default();
        for i in 0..10_000u64 {
            let mut e = event(i, EventKind::AgentDisconnected, None);
            e.agent_id = Some(format!("agt_{i}"));
            p.disconnected(Arc::new(e), t0 + Duration::from_millis(i));
        }
        // Half came back; their queue entries are skipped, not searched for.
        for i in (0..10_000u64).step_by(2) {
            p.back(&format!("agt_{i}"));
        }
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_millis(1)));
        let due = p.due(t0 + Duration::from_millis(99), |_| false);
        assert_eq!(due.len(), 50);
        assert!(due.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(p.due(t0 + Duration::from_secs(60), |_| false).len(), 4_950);
        assert_eq!(p.next_deadline(), None);
        assert!(p.queue.is_empty() && p.agents.is_empty());
    }

    #[tokio::test]
    async fn a_lagging_subscriber_counts_what_it_lost() {
        let bus = EventBus::with_limits(100, Duration::from_secs(600), 4, 1);
        let metrics = Arc::new(Metrics::default());
        let task = LifecycleTask::new(
            &bus,
            Notifier::disabled(crate::store::Store::open_in_memory().unwrap()),
            Arc::new(Hub::new()),
            metrics.clone(),
            Duration::from_secs(1),
        );
        for _ in 0..10 {
            bus.publish(EventKind::JobFinished, None, None, "x", None);
        }
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(task.run(shutdown.clone()));
        flotilla_testkit::eventually(Duration::from_secs(10), "the lag counted", || async {
            (metrics.lifecycle_events_lost_total() == 6).then_some(())
        })
        .await;
        shutdown.cancel();
        run.await.unwrap();
    }
}
