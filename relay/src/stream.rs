//! The live event bus behind `GET /api/v1/events/stream`: every part of the relay that learns
//! something calls [`EventBus::publish`]; each stream client [`EventBus::subscribe`]s.
//!
//! `publish` never awaits and does no per-client or per-agent work: under one `std` mutex it
//! appends to a bounded replay ring (at most [`REPLAY_EVENTS`] events and [`REPLAY_AGE`] old,
//! both enforced on append) and sends one `Arc` on a `tokio::sync::broadcast` channel whose
//! capacity is every client's queue bound ([`CLIENT_QUEUE`]). A client that falls that far
//! behind sees `Lagged` on its receiver: that is the "reset" case, the stream sends
//! `event: reset` and ends. The broadcast buffer is shared, so a client that never reads costs
//! no memory beyond its receiver.
//!
//! Ids start at the Unix time in microseconds when the bus was made and grow by one per event,
//! so they are strictly increasing within a process and (in practice) across restarts: a
//! `Last-Event-ID` from an earlier process is older than the ring and gets a reset, never a
//! wrong replay.
//!
//! Selector filters: the event carries only its `agent_id`, never labels (looking labels up
//! on publish would be per-agent work on the broadcast path). Each client resolves the labels
//! of the agents it sees in its own task, once per agent, through a [`LabelCache`] filled from
//! the store; `agent.enrolled` / `agent.connected` refresh the entry (a label change is sent
//! with the agent's next welcome, i.e. its next connection). Events without an `agent_id`
//! (rollouts, jobs, fleet-wide alerts) pass every selector.

use chrono::{DateTime, Utc};
use flotilla_shared::selector::{Labels, Selector};
use flotilla_shared::stream::{kind_selected, EventKind, FleetEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// The replay ring holds at most this many events ...
pub const REPLAY_EVENTS: usize = 10_000;
/// ... and none older than this.
pub const REPLAY_AGE: Duration = Duration::from_secs(600);
/// How far behind a client may fall before it is reset.
pub const CLIENT_QUEUE: usize = 1024;

/// Where a bus forwards what is published on it ([`EventBus::forward_to`]).
pub type Forward = Box<dyn Fn(&FleetEvent) + Send + Sync>;

struct Ring {
    events: VecDeque<Arc<FleetEvent>>,
    next_id: u64,
}

pub struct EventBus {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<FleetEvent>>,
    max_events: usize,
    max_age: chrono::Duration,
    /// Where published events also go (the other relays), see [`EventBus::forward_to`].
    forward: std::sync::OnceLock<Forward>,
}

/// What a client is interested in.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Kind prefixes (`agent`, `rollout.transition`); empty means all.
    pub kinds: Vec<String>,
    pub selector: Option<Selector>,
}

/// Where a subscription starts.
#[derive(Debug)]
pub enum Start {
    /// The events after the client's last id (kind-filtered), oldest first.
    Replay(Vec<Arc<FleetEvent>>),
    /// The client's last id is older than the ring holds (or from another process).
    Reset(String),
}

pub struct Subscription {
    pub start: Start,
    pub live: broadcast::Receiver<Arc<FleetEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        let first = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(1);
        EventBus::with_limits(REPLAY_EVENTS, REPLAY_AGE, CLIENT_QUEUE, first)
    }
}

impl EventBus {
    /// A bus with chosen limits (tests); the relay uses [`EventBus::default`].
    pub fn with_limits(
        max_events: usize,
        max_age: Duration,
        client_queue: usize,
        first_id: u64,
    ) -> Self {
        let (tx, _) = broadcast::channel(client_queue.max(1));
        EventBus {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next_id: first_id.max(1),
            }),
            tx,
            max_events: max_events.max(1),
            max_age: chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX),
            forward: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every mutation leaves the ring consistent, so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event and hands it to every client; never awaits.
    pub fn publish(
        &self,
        kind: EventKind,
        agent_id: Option<&str>,
        subject: Option<&str>,
        summary: impl Into<String>,
        data: Option<serde_json::Value>,
    ) -> u64 {
        self.publish_at(Utc::now(), kind, agent_id, subject, summary.into(), data)
    }

    fn publish_at(
        &self,
        at: DateTime<Utc>,
        kind: EventKind,
        agent_id: Option<&str>,
        subject: Option<&str>,
        summary: String,
        data: Option<serde_json::Value>,
    ) -> u64 {
        let event = self.append(FleetEvent {
            id: 0,
            at,
            kind: kind.as_str().to_string(),
            agent_id: agent_id.map(str::to_string),
            subject: subject.map(str::to_string),
            summary,
            data,
        });
        if let Some(forward) = self.forward.get() {
            forward(&event);
        }
        event.id
    }

    /// An event another relay of the cluster published: given this bus's next id and handed
    /// to this relay's clients like its own, never forwarded again.
    pub fn publish_remote(&self, event: FleetEvent) -> u64 {
        self.append(event).id
    }

    /// Hands every event published here from now on to `forward` too (the cluster's link to
    /// the other relays); set once. `forward` must not block.
    pub fn forward_to(&self, forward: Forward) {
        if self.forward.set(forward).is_err() {
            tracing::warn!("the event bus is already forwarded; ignoring a second forward");
        }
    }

    fn append(&self, mut event: FleetEvent) -> Arc<FleetEvent> {
        let mut ring = self.lock();
        event.id = ring.next_id;
        ring.next_id += 1;
        let at = event.at;
        let event = Arc::new(event);
        ring.events.push_back(event.clone());
        self.prune(&mut ring, at);
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(event.clone());
        event
    }

    fn prune(&self, ring: &mut Ring, now: DateTime<Utc>) {
        while ring.events.len() > self.max_events {
            ring.events.pop_front();
        }
        while ring
            .events
            .front()
            .is_some_and(|e| now - e.at > self.max_age)
        {
            ring.events.pop_front();
        }
    }

    /// The replay after `after` (or a reset) and a live receiver, taken under the same lock as
    /// `publish` so that nothing falls between them and nothing comes twice. `after = None`
    /// starts with live events only.
    pub fn subscribe(&self, after: Option<u64>, filter: &Filter) -> Subscription {
        self.subscribe_at(Utc::now(), after, filter)
    }

    fn subscribe_at(
        &self,
        now: DateTime<Utc>,
        after: Option<u64>,
        filter: &Filter,
    ) -> Subscription {
        let mut ring = self.lock();
        self.prune(&mut ring, now);
        let live = self.tx.subscribe();
        let last = ring.next_id - 1;
        let oldest_kept = ring.events.front().map_or(ring.next_id, |e| e.id);
        let start = match after {
            None => Start::Replay(Vec::new()),
            Some(after) if after > last => Start::Reset(format!(
                "event id {after} is newer than this relay's last ({last}); it restarted"
            )),
            Some(after) if after + 1 < oldest_kept => Start::Reset(format!(
                "event id {after} is older than the replay buffer (oldest kept {oldest_kept})"
            )),
            Some(after) => Start::Replay(
                ring.events
                    .iter()
                    .filter(|e| e.id > after && kind_selected(&filter.kinds, &e.kind))
                    .cloned()
                    .collect(),
            ),
        };
        Subscription { start, live }
    }

    /// Events in the replay ring (tests and the memory check).
    #[doc(hidden)]
    pub fn replay_len(&self) -> usize {
        self.lock().events.len()
    }

    /// Receivers alive: stream clients and the relay's own subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// What a client's filter says about one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Send,
    Skip,
    /// The labels of this agent are not known yet: look them up, [`LabelCache::insert`], ask again.
    NeedLabels(String),
}

/// One client's view of agents' labels, for its selector (see the module doc).
#[derive(Default)]
pub struct LabelCache {
    /// `None`: the agent does not exist (revoked and gone): its events do not match.
    labels: HashMap<String, Option<Labels>>,
}

impl LabelCache {
    pub fn insert(&mut self, agent_id: String, labels: Option<Labels>) {
        self.labels.insert(agent_id, labels);
    }

    pub fn decide(&mut self, filter: &Filter, event: &FleetEvent) -> Decision {
        if !kind_selected(&filter.kinds, &event.kind) {
            return Decision::Skip;
        }
        let (Some(selector), Some(agent_id)) = (&filter.selector, &event.agent_id) else {
            return Decision::Send;
        };
        let refresh = event.kind == EventKind::AgentEnrolled.as_str()
            || event.kind == EventKind::AgentConnected.as_str();
        if refresh {
            self.labels.remove(agent_id);
        }
        match self.labels.get(agent_id) {
            None => Decision::NeedLabels(agent_id.clone()),
            Some(Some(labels)) if selector.matches(labels) => Decision::Send,
            Some(_) => Decision::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(max_events: usize, queue: usize) -> EventBus {
        EventBus::with_limits(max_events, Duration::from_secs(600), queue, 100)
    }

    fn ids(start: &Start) -> Vec<u64> {
        match start {
            Start::Replay(events) => events.iter().map(|e| e.id).collect(),
            Start::Reset(reason) => panic!("reset: {reason}"),
        }
    }

    #[test]
    fn ids_increase_and_replay_resumes_after_the_last_seen() {
        let bus = bus(10, 8);
        let a = bus.publish(EventKind::AgentConnected, Some("ag_1"), None, "up", None);
        let b = bus.publish(EventKind::JobFinished, None, Some("job_1"), "done", None);
        let c = bus.publish(
            EventKind::AgentDisconnected,
            Some("ag_1"),
            None,
            "down",
            None,
        );
        assert_eq!((a, b, c), (100, 101, 102));
        assert_eq!(
            ids(&bus.subscribe(Some(100), &Filter::default()).start),
            [101, 102]
        );
        assert_eq!(
            ids(&bus.subscribe(Some(102), &Filter::default()).start),
            Vec::<u64>::new()
        );
        assert_eq!(
            ids(&bus.subscribe(Some(99), &Filter::default()).start),
            [100, 101, 102]
        );
        let agents = Filter {
            kinds: vec!["agent".into()],
            selector: None,
        };
        assert_eq!(ids(&bus.subscribe(Some(99), &agents).start), [100, 102]);
    }

    #[test]
    fn an_id_older_than_the_ring_or_from_another_process_resets() {
        let bus = bus(3, 8);
        for _ in 0..5 {
            bus.publish(EventKind::JobFinished, None, None, "x", None);
        }
        // 100..=104 published, 102..=104 kept: 101 is the last id that loses nothing.
        assert_eq!(bus.replay_len(), 3);
        assert_eq!(
            ids(&bus.subscribe(Some(101), &Filter::default()).start),
            [102, 103, 104]
        );
        assert!(matches!(
            bus.subscribe(Some(100), &Filter::default()).start,
            Start::Reset(_)
        ));
        assert!(matches!(
            bus.subscribe(Some(5000), &Filter::default()).start,
            Start::Reset(_)
        ));
        // A fresh bus (a restarted relay) resets any earlier id.
        let fresh = bus_from(200);
        assert!(matches!(
            fresh.subscribe(Some(150), &Filter::default()).start,
            Start::Reset(_)
        ));
    }

    fn bus_from(first: u64) -> EventBus {
        EventBus::with_limits(10, Duration::from_secs(600), 8, first)
    }

    #[test]
    fn old_events_leave_the_ring() {
        let bus = EventBus::with_limits(100, Duration::from_secs(600), 8, 1);
        let t0 = Utc::now() - chrono::Duration::seconds(900);
        bus.publish_at(t0, EventKind::JobFinished, None, None, "old".into(), None);
        bus.publish(EventKind::JobFinished, None, None, "new", None);
        assert_eq!(bus.replay_len(), 1);
        assert!(matches!(
            bus.subscribe(Some(0), &Filter::default()).start,
            Start::Reset(_)
        ));
        assert_eq!(ids(&bus.subscribe(Some(1), &Filter::default()).start), [2]);
    }

    #[tokio::test]
    async fn live_follows_replay_without_gap_and_a_lagging_receiver_is_told() {
        let bus = bus(100, 4);
        bus.publish(EventKind::JobFinished, None, None, "1", None);
        let mut sub = bus.subscribe(Some(99), &Filter::default());
        bus.publish(EventKind::JobFinished, None, None, "2", None);
        assert_eq!(ids(&sub.start), [100]);
        assert_eq!(sub.live.recv().await.unwrap().id, 101);
        for _ in 0..10 {
            bus.publish(EventKind::JobFinished, None, None, "flood", None);
        }
        assert!(matches!(
            sub.live.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[test]
    fn selectors_see_events_of_matching_agents_and_events_of_no_agent() {
        let filter = Filter {
            kinds: vec![],
            selector: Some("region=eu".parse().unwrap()),
        };
        let mut cache = LabelCache::default();
        let event = |kind: EventKind, agent: Option<&str>| FleetEvent {
            id: 1,
            at: Utc::now(),
            kind: kind.as_str().into(),
            agent_id: agent.map(str::to_string),
            subject: None,
            summary: String::new(),
            data: None,
        };
        let eu: Labels = [("region".to_string(), "eu".to_string())].into();
        let us: Labels = [("region".to_string(), "us".to_string())].into();
        assert_eq!(
            cache.decide(&filter, &event(EventKind::JobFinished, None)),
            Decision::Send
        );
        let hb = event(EventKind::AgentHeartbeat, Some("ag_eu"));
        assert_eq!(
            cache.decide(&filter, &hb),
            Decision::NeedLabels("ag_eu".into())
        );
        cache.insert("ag_eu".into(), Some(eu));
        cache.insert("ag_us".into(), Some(us.clone()));
        cache.insert("ag_gone".into(), None);
        assert_eq!(cache.decide(&filter, &hb), Decision::Send);
        let us_event = event(EventKind::AgentHeartbeat, Some("ag_us"));
        assert_eq!(cache.decide(&filter, &us_event), Decision::Skip);
        let gone = event(EventKind::ContainerEvent, Some("ag_gone"));
        assert_eq!(cache.decide(&filter, &gone), Decision::Skip);
        // A connection re-reads the labels (they may have changed).
        let connected = event(EventKind::AgentConnected, Some("ag_us"));
        assert_eq!(
            cache.decide(&filter, &connected),
            Decision::NeedLabels("ag_us".into())
        );
    }
}
