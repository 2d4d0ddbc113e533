//! The notification outbox's pure model: what one notification carries ([`Notification`], the
//! generic webhook's body), which channels take it ([`ChannelRoute`]), a stored delivery's
//! lifecycle ([`DeliveryState`], [`AttemptOutcome`]), and the `notification_failed` rule's
//! source ([`notification_failed_conditions`]).
//!
//! A notification is one row per (delivery id, channel), written in the transaction that
//! decides it (for alerts: the evaluation's, `Store::apply_alert_conditions`), then claimed,
//! sent and finished by the delivery engine (`crate::alerts::notify`). The delivery id is
//! `<alert_id>.<firing|resolved>` (lifecycle events: `evt_<event id>.<type>`): the same on every
//! attempt, after every restart and on every relay, so receivers de-duplicate on it.

use super::config::AlertsConfig;
use super::rules::{Condition, Rule};
use super::NotificationKind;
use chrono::{DateTime, Utc};
use flotilla_shared::alert::{AlertInfo, Severity};
use flotilla_shared::selector::Labels;
use serde::{Deserialize, Serialize};

/// One alert notification (the JSON body of the generic webhook is exactly this, serialised).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Link-friendly alert id (`alr_...`), stable across firing → resolved.
    pub alert_id: String,
    /// Firing or resolved.
    pub kind: NotificationKind,
    /// Rule name, e.g. `agent_unreachable`, `disk_full`.
    pub rule: String,
    /// The alert's severity (channels skip alerts below their `min_severity`).
    pub severity: Severity,
    /// None for alerts not about one agent (e.g. a TLS endpoint).
    pub agent_id: Option<String>,
    /// The agent's name (host name) when the alert is about one agent.
    pub agent_name: Option<String>,
    /// The agent's labels (empty when there is no agent).
    pub agent_labels: Labels,
    /// What the alert is about on that agent: container name, filesystem, backup key, ...
    pub subject: String,
    /// One sentence for people.
    pub message: String,
    /// When the condition started.
    pub started_at: DateTime<Utc>,
    /// Set for `resolved`.
    pub resolved_at: Option<DateTime<Utc>>,
    /// `<public_url>/api/v1/alerts/<alert_id>` (the relay's configured public URL).
    pub url: String,
}

impl Notification {
    /// The notification announcing `a`'s firing or resolution, linking to `url`.
    pub fn of(kind: NotificationKind, a: &AlertInfo, url: String) -> Notification {
        Notification {
            alert_id: a.id.clone(),
            kind,
            rule: a.rule.clone(),
            severity: a.severity,
            agent_id: a.agent_id.clone(),
            agent_name: a.agent_name.clone(),
            agent_labels: a.agent_labels.clone(),
            subject: a.subject.clone(),
            message: a.message.clone(),
            started_at: a.started_at,
            resolved_at: a.resolved_at,
            url,
        }
    }

    /// `alert.firing` or `alert.resolved` (`X-Flotilla-Event`).
    pub fn event_name(&self) -> &'static str {
        alert_event_name(self.kind)
    }

    /// Where the alert is: the agent's name, else its id, else the alert's subject.
    pub fn location(&self) -> &str {
        self.agent_name
            .as_deref()
            .or(self.agent_id.as_deref())
            .unwrap_or(&self.subject)
    }

    /// The `X-Flotilla-Delivery` id: `<alert_id>.<firing|resolved>`, stable per (alert, kind)
    /// across retries and relay restarts.
    pub fn delivery_id(&self) -> String {
        format!("{}.{}", self.alert_id, self.kind.as_str())
    }

    /// The agent's labels as `k=v, k=v` (empty when there are none).
    pub fn labels_text(&self) -> String {
        self.agent_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `alert.firing` / `alert.resolved`.
pub const fn alert_event_name(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Firing => "alert.firing",
        NotificationKind::Resolved => "alert.resolved",
    }
}

/// What the store needs to know of one configured channel to route a notification to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRoute {
    /// The channel's configured `name` (unique; the outbox rows name it).
    pub name: String,
    /// Alerts below this severity skip the channel.
    pub min_severity: Severity,
    /// The event names it subscribes to (`alert.firing`, `agent.enrolled`, ...).
    pub events: Vec<String>,
}

impl ChannelRoute {
    /// Whether this channel takes an event of this name (and, for an alert, this severity).
    pub fn takes(&self, event: &str, severity: Option<Severity>) -> bool {
        self.events.iter().any(|e| e == event) && severity.is_none_or(|s| s >= self.min_severity)
    }
}

/// Where the decided notifications of one evaluation go: the configured channels, the links'
/// prefix, and how many undelivered notifications a channel may hold (`notify.queue_capacity`;
/// beyond it a new one is recorded as given up at once, never waited for).
#[derive(Clone, Debug, Default)]
pub struct OutboxPolicy {
    pub routes: Vec<ChannelRoute>,
    /// [`crate::alerts::alert_url`] without the id.
    pub url_prefix: String,
    pub capacity: usize,
}

/// One notification for one channel, as decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNotification {
    pub delivery_id: String,
    pub channel: String,
    /// `alert.firing`, `agent.enrolled`, ...
    pub event: String,
    /// The alert it announces (None for lifecycle events).
    pub alert_id: Option<String>,
    /// The payload as JSON ([`Notification`] or a lifecycle event), the same on every attempt.
    pub payload: String,
}

pub use flotilla_shared::alert::NotificationState as DeliveryState;

/// A notification claimed for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub delivery_id: String,
    pub channel: String,
    pub event: String,
    pub alert_id: Option<String>,
    pub payload: String,
    /// This attempt's number (1 for the first); finishing it names it, so an attempt whose
    /// claim expired and was taken again cannot finish the newer one.
    pub attempt: u32,
    /// When it was decided (the give-up time counts from here).
    pub created_at: DateTime<Utc>,
}

/// How one attempt ended, as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Given up (refused for good, or out of time).
    Failed {
        error: String,
    },
}

/// Filter of `GET /api/v1/notifications`.
#[derive(Clone, Debug, Default)]
pub struct NotificationQuery {
    pub state: Option<DeliveryState>,
    pub alert_id: Option<String>,
    pub channel: Option<String>,
    pub limit: u32,
}

/// A channel whose newest finished notification was given up: how many were given up since
/// its last delivery, and the newest of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelFailures {
    pub channel: String,
    pub failed: u64,
    pub first_failed_at: DateTime<Utc>,
    pub latest_delivery_id: String,
    pub latest_error: String,
}

/// `notification_failed` (hard): one alert per configured channel that gave a notification
/// up and has delivered nothing since; it resolves at the channel's next delivery. Channels
/// no longer configured are not looked at.
pub fn notification_failed_conditions(
    cfg: &AlertsConfig,
    failures: &[ChannelFailures],
    configured: &[ChannelRoute],
) -> Vec<Condition> {
    failures
        .iter()
        .filter(|f| configured.iter().any(|c| c.name == f.channel))
        .map(|f| {
            let message = format!(
                "notification channel {} gave up {} notification{} (latest {}: {})",
                f.channel,
                f.failed,
                if f.failed == 1 { "" } else { "s" },
                f.latest_delivery_id,
                f.latest_error
            );
            Condition::new(
                cfg,
                None,
                Rule::NotificationFailed,
                f.channel.clone(),
                message,
                Some(f.first_failed_at),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_that_gave_up_is_one_hard_alert_and_an_unconfigured_one_none() {
        let cfg = AlertsConfig::default();
        let at: DateTime<Utc> = "2026-12-08T00:00:00Z".parse().unwrap();
        let failures = vec![
            ChannelFailures {
                channel: "ops".into(),
                failed: 2,
                first_failed_at: at,
                latest_delivery_id: "alr_1.firing".into(),
                latest_error: "HTTP 503".into(),
            },
            ChannelFailures {
                channel: "gone".into(),
                failed: 1,
                first_failed_at: at,
                latest_delivery_id: "alr_2.firing".into(),
                latest_error: "HTTP 503".into(),
            },
        ];
        let route = ChannelRoute {
            name: "ops".into(),
            min_severity: Severity::Medium,
            events: vec!["alert.firing".into()],
        };
        let c = notification_failed_conditions(&cfg, &failures, std::slice::from_ref(&route));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].rule, Rule::NotificationFailed);
        assert_eq!(c[0].severity, Severity::Hard);
        assert_eq!(c[0].subject, "ops");
        assert_eq!(c[0].since, Some(at));
        assert!(
            c[0].message.contains("gave up 2 notifications"),
            "{}",
            c[0].message
        );
        assert!(
            c[0].message.contains("alr_1.firing: HTTP 503"),
            "{}",
            c[0].message
        );

        assert!(route.takes("alert.firing", Some(Severity::Hard)));
        assert!(!route.takes("alert.firing", Some(Severity::Soft)));
        assert!(!route.takes("agent.enrolled", None));
    }
}
