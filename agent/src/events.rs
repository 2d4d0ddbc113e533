//! Follows the engine's container events and turns the interesting ones into agent events in the
//! outbox: died (with exit code), OOM, health changes, starts — and restart loops, which the
//! engine does not report as such.
//!
//! Where it stands is stored with the events it appends (`state::EventCursor`), so a restarted
//! agent resumes behind the last stored event — events from while it was down are not lost, as
//! far as the engine still has them (it keeps a short backlog; the agent looks back at most
//! `MAX_RESUME_AGE`). Events at exactly the stored time are told apart by container and action,
//! so none is stored twice.

use crate::docker::{ContainerEvent, DockerClient};
use crate::state::{EventCursor, State};
use chrono::{DateTime, Utc};
use flotilla_daemon::backoff::Backoff;
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A stream that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// A restarted agent asks the engine for events at most this far back.
pub const MAX_RESUME_AGE: Duration = Duration::from_secs(24 * 3600);

/// The events task's wiring.
pub struct EventsTask {
    pub docker: DockerClient,
    pub state: State,
    /// Containers an update acts on: their events carry `updating=<command id>`.
    pub updating: crate::update::Updating,
    pub restart_loop_threshold: u32,
    pub restart_loop_window_secs: u64,
}

impl EventsTask {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::reconnect();
        let mut detector = RestartLoopDetector::new(
            self.restart_loop_threshold as usize,
            self.restart_loop_window_secs,
        );
        // Where to resume — after a restart or after the stream broke — so events during the
        // gap are not lost.
        let stored = match self.state.events_cursor().await {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "cannot read where the event stream stopped; following from now"
                );
                None
            }
        };
        let mut cursor = resume_cursor(stored, now_nanos());
        let mut oom = OomTracker::default();
        let mut outage_logged = false;
        loop {
            let since = format_since(cursor.time_nano);
            let subscribed = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.docker.events(Some(since)) => r,
            };
            let why = match subscribed {
                Err(e) => e.to_string(),
                Ok(mut stream) => {
                    let up_since = Instant::now();
                    if outage_logged {
                        info!("following docker events again");
                        outage_logged = false;
                    } else {
                        debug!("following docker events");
                    }
                    let why = loop {
                        let item = tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            item = stream.next() => item,
                        };
                        match item {
                            None => break "the engine closed the event stream".to_string(),
                            Some(Err(e)) => break e.to_string(),
                            Some(Ok(ev)) => {
                                if !cursor.advance(&ev) {
                                    debug!(
                                        id = ev.id,
                                        action = ev.action,
                                        "skipping an event already handled"
                                    );
                                    continue;
                                }
                                let mut events = map_event(&ev, &mut detector);
                                self.reconcile_oom(&ev, &mut oom, &mut events).await;
                                for e in &mut events {
                                    let update = e
                                        .container_name
                                        .as_deref()
                                        .and_then(|n| self.updating.command_for(n));
                                    if let Some(command_id) = update {
                                        e.attributes.insert("updating".into(), command_id);
                                    }
                                }
                                if !events.is_empty() {
                                    let items = events.into_iter().map(OutboxItem::Event).collect();
                                    let stored = self.state.append_events(items, cursor.clone());
                                    if let Err(e) = stored.await {
                                        warn!(
                                            error = format!("{e:#}"),
                                            "cannot store container event"
                                        );
                                    }
                                }
                            }
                        }
                    };
                    if up_since.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                    why
                }
            };
            if outage_logged {
                debug!(error = why, "docker events still unavailable");
            } else {
                warn!(
                    error = why,
                    "lost the docker event stream; retrying with backoff"
                );
                outage_logged = true;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl EventsTask {
    /// The engine's OOM reporting is not reliable: its `oom` event (and with it
    /// `State.OOMKilled`) is lost when the kernel's notification arrives after the container's
    /// cgroup is gone — seen under load with a process killed within 100 ms of starting. So a
    /// `die` without a preceding `oom` is checked: `State.OOMKilled`, or else exit code 137
    /// (SIGKILL) of a container with a memory limit that Docker itself did not kill (no `kill`
    /// event just before), which is the OOM killer in practice; that case is reported with
    /// `inferred=true`. An `oom` arriving after a kill found that way is dropped.
    async fn reconcile_oom(
        &self,
        ev: &ContainerEvent,
        oom: &mut OomTracker,
        events: &mut Vec<AgentEvent>,
    ) {
        match ev.action.as_str() {
            "kill" => oom.on_docker_kill(&ev.id, ev.time_nano),
            "oom" if !oom.on_oom(&ev.id, ev.time_nano) => {
                events.retain(|e| e.kind != EventKind::ContainerOom);
            }
            "die" if oom.needs_check(&ev.id, ev.time_nano) => {
                let (killed, limited) = match self.docker.inspect_id(&ev.id).await {
                    Ok(Some(c)) => (
                        c.state.and_then(|s| s.oom_killed).unwrap_or(false),
                        c.host_config.and_then(|h| h.memory).is_some_and(|m| m > 0),
                    ),
                    _ => (false, false),
                };
                let sigkill = ev.attributes.get("exitCode").map(String::as_str) == Some("137");
                let inferred =
                    !killed && sigkill && limited && !oom.killed_by_docker(&ev.id, ev.time_nano);
                if killed || inferred {
                    oom.found_on_die(&ev.id, ev.time_nano);
                    let template = events.first().cloned();
                    if let Some(died) = template {
                        let name = died.container_name.clone().unwrap_or_default();
                        let mut attributes = died.attributes.clone();
                        if inferred {
                            attributes.insert("inferred".into(), "true".into());
                        }
                        let message = if inferred {
                            format!(
                                "container {name} was SIGKILLed at its memory limit (out of \
                                 memory; the engine did not report it)"
                            )
                        } else {
                            format!("container {name} ran out of memory")
                        };
                        events.insert(
                            0,
                            AgentEvent {
                                kind: EventKind::ContainerOom,
                                message,
                                attributes,
                                ..died
                            },
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// Which containers had an OOM kill reported recently, and how; and which Docker killed.
#[derive(Default)]
struct OomTracker {
    /// container id → (engine time in ns, whether it was found on `die` rather than `oom`)
    seen: HashMap<String, (i64, bool)>,
    /// container id → engine time of its last `kill` event (docker stop/kill/restart)
    docker_kills: HashMap<String, i64>,
}

impl OomTracker {
    /// Two reports of one container further apart than this are two OOM kills.
    const WINDOW_NANOS: i64 = 60 * 1_000_000_000;

    fn prune(&mut self, now: i64) {
        if self.seen.len() > 1024 {
            self.seen.retain(|_, (t, _)| now - *t < Self::WINDOW_NANOS);
        }
        if self.docker_kills.len() > 1024 {
            self.docker_kills
                .retain(|_, t| now - *t < Self::WINDOW_NANOS);
        }
    }

    fn on_docker_kill(&mut self, id: &str, t: i64) {
        self.prune(t);
        self.docker_kills.insert(id.to_string(), t);
    }

    /// Whether Docker sent the container a signal shortly before `t` (so a SIGKILL exit is
    /// Docker's doing, not the OOM killer's).
    fn killed_by_docker(&self, id: &str, t: i64) -> bool {
        self.docker_kills
            .get(id)
            .is_some_and(|k| (t - k).abs() < Self::WINDOW_NANOS)
    }

    /// An `oom` event arrived; false when a `die` already reported this kill.
    fn on_oom(&mut self, id: &str, t: i64) -> bool {
        self.prune(t);
        let dup = matches!(self.seen.get(id), Some((seen, true)) if (t - seen).abs() < Self::WINDOW_NANOS);
        if !dup {
            self.seen.insert(id.to_string(), (t, false));
        }
        !dup
    }

    /// A `die` arrived: whether the container must be inspected for an OOM kill (no `oom`
    /// event for it just before).
    fn needs_check(&self, id: &str, t: i64) -> bool {
        !matches!(self.seen.get(id), Some((seen, _)) if (t - seen).abs() < Self::WINDOW_NANOS)
    }

    fn found_on_die(&mut self, id: &str, t: i64) {
        self.seen.insert(id.to_string(), (t, true));
    }
}

fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Where a starting follower begins: behind the stored cursor, but never more than
/// `MAX_RESUME_AGE` before `now`; from `now` when nothing was stored (or the stored cursor lies
/// in the future: the clock was set back, and the engine's times are not comparable to it).
fn resume_cursor(stored: Option<EventCursor>, now: i64) -> EventCursor {
    let oldest = now.saturating_sub(MAX_RESUME_AGE.as_nanos() as i64);
    match stored {
        Some(c) if c.time_nano >= oldest && c.time_nano <= now => c,
        Some(c) if c.time_nano < oldest => EventCursor {
            time_nano: oldest,
            keys: Vec::new(),
        },
        _ => EventCursor {
            time_nano: now,
            keys: Vec::new(),
        },
    }
}

// === impl EventCursor (as the follower uses it) ===

trait Advance {
    /// Moves past `ev`; false when `ev` was handled already (before the cursor, or at its time
    /// with the same container and action).
    fn advance(&mut self, ev: &ContainerEvent) -> bool;
}

impl Advance for EventCursor {
    fn advance(&mut self, ev: &ContainerEvent) -> bool {
        if ev.time_nano <= 0 {
            // No time to order it by (never from a current engine): handle it, keep the cursor.
            return true;
        }
        let key = format!("{}/{}", ev.id, ev.action);
        if ev.time_nano < self.time_nano
            || (ev.time_nano == self.time_nano && self.keys.contains(&key))
        {
            return false;
        }
        if ev.time_nano > self.time_nano {
            self.time_nano = ev.time_nano;
            self.keys.clear();
        }
        self.keys.push(key);
        true
    }
}

/// Docker's `since`: unix seconds with a nanosecond fraction.
fn format_since(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// Maps one engine event to zero or more agent events.
pub fn map_event(ev: &ContainerEvent, detector: &mut RestartLoopDetector) -> Vec<AgentEvent> {
    let at = DateTime::<Utc>::from_timestamp_nanos(ev.time_nano);
    let name = ev
        .name
        .clone()
        .unwrap_or_else(|| ev.id.chars().take(12).collect());
    let mut attributes = BTreeMap::new();
    if let Some(image) = ev.attributes.get("image") {
        attributes.insert("image".to_string(), image.clone());
    }
    let event = |kind, message: String, attributes| AgentEvent {
        kind,
        at,
        container_id: Some(ev.id.clone()),
        container_name: Some(name.clone()),
        message,
        attributes,
    };
    let action = ev.action.as_str();
    match action {
        "start" => {
            let mut out = vec![event(
                EventKind::ContainerStarted,
                format!("container {name} started"),
                attributes.clone(),
            )];
            if let Some(count) = detector.record_start(&ev.id, ev.time_nano) {
                let mut a = attributes;
                a.insert("restarts_in_window".into(), count.to_string());
                a.insert("window_secs".into(), detector.window_secs.to_string());
                out.push(event(
                    EventKind::ContainerRestartLoop,
                    format!(
                        "container {name} started {count} times within {} s (restart loop)",
                        detector.window_secs
                    ),
                    a,
                ));
            }
            out
        }
        "die" => {
            let exit_code = ev.attributes.get("exitCode").cloned();
            let message = match &exit_code {
                Some(code) => format!("container {name} died with exit code {code}"),
                None => format!("container {name} died"),
            };
            if let Some(code) = exit_code {
                attributes.insert("exit_code".into(), code);
            }
            vec![event(EventKind::ContainerDied, message, attributes)]
        }
        "oom" => vec![event(
            EventKind::ContainerOom,
            format!("container {name} ran out of memory"),
            attributes,
        )],
        "destroy" => {
            detector.forget(&ev.id);
            Vec::new()
        }
        a if a.starts_with("health_status") => {
            let status = a
                .split_once(':')
                .map(|(_, s)| s.trim().to_string())
                .unwrap_or_default();
            if status.is_empty() {
                return Vec::new();
            }
            attributes.insert("health_status".into(), status.clone());
            vec![event(
                EventKind::ContainerHealth,
                format!("container {name} is {status}"),
                attributes,
            )]
        }
        _ => Vec::new(),
    }
}

// === impl RestartLoopDetector ===

/// Counts starts per container in a sliding window; reports a loop at most once per window.
pub struct RestartLoopDetector {
    threshold: usize,
    window_secs: u64,
    starts: HashMap<String, VecDeque<i64>>,
    last_alert: HashMap<String, i64>,
}

impl RestartLoopDetector {
    pub fn new(threshold: usize, window_secs: u64) -> Self {
        RestartLoopDetector {
            threshold: threshold.max(1),
            window_secs,
            starts: HashMap::new(),
            last_alert: HashMap::new(),
        }
    }

    fn window_nanos(&self) -> i64 {
        (self.window_secs as i64).saturating_mul(1_000_000_000)
    }

    /// Records a start at `t` (unix nanos); returns the number of starts in the window when this
    /// start makes a restart loop that has not been reported within the last window.
    pub fn record_start(&mut self, id: &str, t: i64) -> Option<usize> {
        let window = self.window_nanos();
        if self.starts.len() > 256 {
            // Containers that stopped starting long ago need no memory.
            self.starts
                .retain(|_, q| q.back().is_some_and(|last| t - last <= window));
            let starts = &self.starts;
            self.last_alert.retain(|id, _| starts.contains_key(id));
        }
        let q = self.starts.entry(id.to_string()).or_default();
        q.push_back(t);
        while q.front().is_some_and(|first| t - first > window) {
            q.pop_front();
        }
        let count = q.len();
        if count < self.threshold {
            return None;
        }
        let due = self
            .last_alert
            .get(id)
            .is_none_or(|last| t - last >= window);
        if due {
            self.last_alert.insert(id.to_string(), t);
            Some(count)
        } else {
            None
        }
    }

    pub fn forget(&mut self, id: &str) {
        self.starts.remove(id);
        self.last_alert.remove(id);
    }
}

#[cfg(test)]
mod oom_tests {
    use super::OomTracker;

    #[test]
    fn oom_reported_once_whichever_way_it_is_seen() {
        let s = 1_000_000_000;
        let mut t = OomTracker::default();
        // The usual order: oom then die; the die needs no inspect.
        assert!(t.on_oom("a", 10 * s));
        assert!(!t.needs_check("a", 10 * s));
        // Lost oom event: the die is checked; a late oom is then dropped.
        assert!(t.needs_check("b", 10 * s));
        t.found_on_die("b", 10 * s);
        assert!(!t.on_oom("b", 11 * s));
        // A much later kill of the same container counts again.
        assert!(t.needs_check("b", 200 * s));
        assert!(t.on_oom("a", 300 * s));
        // docker stop / kill is remembered, so its SIGKILL is not taken for the OOM killer.
        assert!(!t.killed_by_docker("c", 400 * s));
        t.on_docker_kill("c", 400 * s);
        assert!(t.killed_by_docker("c", 410 * s));
        assert!(!t.killed_by_docker("c", 500 * s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ev(action: &str, t_secs: i64, attrs: &[(&str, &str)]) -> ContainerEvent {
        let mut attributes: HashMap<String, String> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.insert("name".into(), "web".into());
        attributes.insert("image".into(), "nginx:1".into());
        ContainerEvent {
            action: action.into(),
            id: "abc123".into(),
            name: Some("web".into()),
            attributes,
            time_nano: 1_700_000_000 * S + t_secs * S,
        }
    }

    fn kinds(events: &[AgentEvent]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn died_oom_and_health_map() {
        let mut d = RestartLoopDetector::new(3, 300);
        let out = map_event(&ev("die", 0, &[("exitCode", "137")]), &mut d);
        assert_eq!(kinds(&out), vec![EventKind::ContainerDied]);
        assert_eq!(out[0].attributes["exit_code"], "137");
        assert_eq!(out[0].message, "container web died with exit code 137");
        assert_eq!(out[0].container_name.as_deref(), Some("web"));
        assert_eq!(out[0].container_id.as_deref(), Some("abc123"));
        let out = map_event(&ev("oom", 0, &[]), &mut d);
        assert_eq!(kinds(&out), vec![EventKind::ContainerOom]);
        let out = map_event(&ev("health_status: unhealthy", 0, &[]), &mut d);
        assert_eq!(kinds(&out), vec![EventKind::ContainerHealth]);
        assert_eq!(out[0].attributes["health_status"], "unhealthy");
        assert!(map_event(&ev("exec_start: sh -c true", 0, &[]), &mut d).is_empty());
        assert!(map_event(&ev("restart", 0, &[]), &mut d).is_empty());
    }

    #[test]
    fn restart_loop_reported_once_per_window() {
        let mut d = RestartLoopDetector::new(3, 300);
        let mut loops = Vec::new();
        for t in [0, 10, 20, 30, 40, 200, 330] {
            let out = map_event(&ev("start", t, &[]), &mut d);
            assert_eq!(out[0].kind, EventKind::ContainerStarted);
            if let Some(l) = out
                .iter()
                .find(|e| e.kind == EventKind::ContainerRestartLoop)
            {
                loops.push((t, l.attributes["restarts_in_window"].clone()));
            }
        }
        // Third start at t=20 makes the loop; the next report is due a window later (t=320+).
        assert_eq!(loops, vec![(20, "3".to_string()), (330, "4".to_string())]);
    }

    #[test]
    fn slow_restarts_are_not_a_loop() {
        let mut d = RestartLoopDetector::new(3, 60);
        for t in [0, 50, 100, 150, 200] {
            assert_eq!(d.record_start("x", t * S), None, "t={t}");
        }
        d.forget("x");
        assert!(d.starts.is_empty());
    }

    #[test]
    fn cursor_skips_what_was_handled_and_only_that() {
        let mut c = EventCursor::default();
        let die = ev("die", 0, &[]);
        let start = ev("start", 0, &[]);
        assert!(c.advance(&die));
        assert!(!c.advance(&die), "same event again");
        assert!(c.advance(&start), "another action at the same time");
        assert!(!c.advance(&start));
        assert!(!c.advance(&ev("die", -1, &[])), "older than the cursor");
        assert!(c.advance(&ev("die", 1, &[])));
        assert_eq!(c.keys, vec!["abc123/die".to_string()]);
    }

    #[test]
    fn resume_is_bounded_to_a_day() {
        let now = 1_700_000_000 * S;
        let fresh = resume_cursor(None, now);
        assert_eq!((fresh.time_nano, fresh.keys.len()), (now, 0));
        let stored = EventCursor {
            time_nano: now - 60 * S,
            keys: vec!["x/die".into()],
        };
        assert_eq!(resume_cursor(Some(stored.clone()), now), stored);
        let ancient = EventCursor {
            time_nano: now - 48 * 3600 * S,
            keys: vec!["x/die".into()],
        };
        let bounded = resume_cursor(Some(ancient), now);
        assert_eq!(bounded.time_nano, now - 24 * 3600 * S);
        assert!(bounded.keys.is_empty());
        // A cursor from the future (clock set back) is not trusted either.
        let future = resume_cursor(
            Some(EventCursor {
                time_nano: now + 3600 * S,
                keys: Vec::new(),
            }),
            now,
        );
        assert_eq!(future.time_nano, now);
    }

    #[test]
    fn since_is_seconds_with_nanos() {
        assert_eq!(format_since(1_700_000_000 * S + 5), "1700000000.000000005");
    }
}
