//! The live event stream's wire types (`GET /api/v1/events/stream`, Server-Sent Events): one
//! [`FleetEvent`] per SSE `data:` line, the closed set of event kinds ([`EventKind`]), and the
//! payload of the `reset` event a client gets when it fell too far behind ([`Reset`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One thing the relay learned, as the stream carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetEvent {
    /// Strictly increasing per relay process (also the SSE `id:`).
    pub id: u64,
    pub at: DateTime<Utc>,
    /// A dotted kind, [`EventKind::as_str`].
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Id of the rollout, job, command, alert, ... the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// One human line.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The data of an `event: reset`: the client missed events and must reload its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reset {
    pub reason: String,
}

/// SSE event name of a reset (other events are unnamed, i.e. "message").
pub const RESET_EVENT: &str = "reset";

/// Every kind the relay publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    AgentConnected,
    AgentDisconnected,
    AgentEnrolled,
    AgentRevoked,
    /// Only when the heartbeat's summary changed.
    AgentHeartbeat,
    ContainerEvent,
    CommandFinished,
    JobFinished,
    UpdateFinished,
    BackupReported,
    RolloutTransition,
    AlertFiring,
    AlertResolved,
    AlertAcked,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::AgentConnected,
        EventKind::AgentDisconnected,
        EventKind::AgentEnrolled,
        EventKind::AgentRevoked,
        EventKind::AgentHeartbeat,
        EventKind::ContainerEvent,
        EventKind::CommandFinished,
        EventKind::JobFinished,
        EventKind::UpdateFinished,
        EventKind::BackupReported,
        EventKind::RolloutTransition,
        EventKind::AlertFiring,
        EventKind::AlertResolved,
        EventKind::AlertAcked,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::AgentConnected => "agent.connected",
            EventKind::AgentDisconnected => "agent.disconnected",
            EventKind::AgentEnrolled => "agent.enrolled",
            EventKind::AgentRevoked => "agent.revoked",
            EventKind::AgentHeartbeat => "agent.heartbeat",
            EventKind::ContainerEvent => "container.event",
            EventKind::CommandFinished => "command.finished",
            EventKind::JobFinished => "job.finished",
            EventKind::UpdateFinished => "update.finished",
            EventKind::BackupReported => "backup.reported",
            EventKind::RolloutTransition => "rollout.transition",
            EventKind::AlertFiring => "alert.firing",
            EventKind::AlertResolved => "alert.resolved",
            EventKind::AlertAcked => "alert.acked",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Whether `kind` is selected by a comma list of kind prefixes (`agent,rollout.transition`):
/// a prefix matches the kind itself or a dotted descendant (`agent` matches `agent.connected`,
/// not `agents.x`). An empty list selects every kind.
pub fn kind_selected(prefixes: &[String], kind: &str) -> bool {
    prefixes.is_empty()
        || prefixes.iter().any(|p| {
            kind == p || (kind.starts_with(p.as_str()) && kind[p.len()..].starts_with('.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_are_distinct() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        let mut names: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(kind_selected(&[], "agent.connected"));
        assert!(kind_selected(&p(&["agent"]), "agent.connected"));
        assert!(kind_selected(&p(&["alert.firing"]), "alert.firing"));
        assert!(!kind_selected(&p(&["alert.firing"]), "alert.resolved"));
        assert!(!kind_selected(&p(&["age"]), "agent.connected"));
        assert!(!kind_selected(&p(&["rollout"]), "command.finished"));
    }

    #[test]
    fn optional_fields_are_omitted() {
        let e = FleetEvent {
            id: 3,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            kind: EventKind::JobFinished.as_str().into(),
            agent_id: None,
            subject: Some("job_1".into()),
            summary: "job finished".into(),
            data: None,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains("agent_id") && !text.contains("\"data\""),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<FleetEvent>(&text).unwrap(), e);
    }
}
