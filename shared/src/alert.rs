//! Alerts: severities, the alert records the relay keeps and serves (`GET /api/v1/alerts`),
//! silences, and the requests that acknowledge or silence them.

use crate::selector::{Labels, Selector};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How loud an alert is (the users' three levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Dashboard only; never notified.
    Soft,
    /// Notified once the condition has lasted the configured delay.
    Medium,
    /// Notified at once.
    Hard,
}

impl Severity {
    /// Every severity, quietest first.
    pub const ALL: [Severity; 3] = [Severity::Soft, Severity::Medium, Severity::Hard];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Soft => "soft",
            Severity::Medium => "medium",
            Severity::Hard => "hard",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "soft" => Ok(Severity::Soft),
            "medium" => Ok(Severity::Medium),
            "hard" => Ok(Severity::Hard),
            other => Err(format!(
                "invalid severity {other:?}: expected soft, medium or hard"
            )),
        }
    }
}

/// Where an alert is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Its condition holds now.
    Firing,
    /// Its condition cleared (`resolved_at`); a new firing of the same condition is a new alert.
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlertState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "firing" => Ok(AlertState::Firing),
            "resolved" => Ok(AlertState::Resolved),
            other => Err(format!(
                "invalid alert state {other:?}: expected firing or resolved"
            )),
        }
    }
}

/// One alert as the relay keeps and serves it (`GET /api/v1/alerts`, `GET /api/v1/alerts/{id}`).
/// Deduplicated per (agent, rule, subject): at most one firing alert per key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertInfo {
    /// `alr_...`; stable from firing to resolved.
    pub id: String,
    /// Rule name: `agent_unreachable`, `disk_full`, `container_died`, ...
    pub rule: String,
    pub severity: Severity,
    /// None for alerts not about one agent (a TLS endpoint, a rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// The agent's labels when the alert last fired (empty without an agent).
    #[serde(default)]
    pub agent_labels: Labels,
    /// What on the agent it is about: a mount point, a container name, a backup key, an
    /// endpoint, a rollout id; the rule name when the rule has one subject per agent.
    pub subject: String,
    /// One sentence for people, as of the latest evaluation.
    pub message: String,
    pub state: AlertState,
    /// When the condition started (as far as the relay can tell).
    pub started_at: DateTime<Utc>,
    /// When the relay recorded it.
    pub fired_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The latest evaluation that changed the alert (message, severity, labels, silence,
    /// notification); an unchanged firing alert is not rewritten every evaluation.
    pub last_seen_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// An active silence matches it: it is recorded but never notified.
    pub silenced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_id: Option<String>,
    /// When its firing notification was delivered on every channel that takes it, or given up
    /// (`GET /api/v1/notifications?alert_id=` shows each channel); at once when no channel
    /// takes it. None: not notified (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<DateTime<Utc>>,
}

/// Where one notification is on one channel (`GET /api/v1/notifications`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    /// Waiting for its next attempt, or in one (`next_attempt_at`).
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: refused for good, not delivered within `notify_give_up_after_secs`, or its
    /// channel's queue was full. Raises `notification_failed`.
    Failed,
}

impl NotificationState {
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationState::Pending => "pending",
            NotificationState::Delivered => "delivered",
            NotificationState::Failed => "failed",
        }
    }
}

impl fmt::Display for NotificationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotificationState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(NotificationState::Pending),
            "delivered" => Ok(NotificationState::Delivered),
            "failed" => Ok(NotificationState::Failed),
            other => Err(format!(
                "invalid notification state {other:?}: expected pending, delivered or failed"
            )),
        }
    }
}

/// One notification on one channel, as the relay's durable outbox keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationDelivery {
    /// What receivers de-duplicate on (`X-Flotilla-Delivery`, `webhook-id`, the e-mail's
    /// `Message-ID`, Slack's text): `<alert_id>.<firing|resolved>` or `evt_<id>.<type>`, the
    /// same on every attempt and across relay restarts.
    pub delivery_id: String,
    /// The configured channel's `name`.
    pub channel: String,
    /// `alert.firing`, `alert.resolved` or a lifecycle event.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    pub state: NotificationState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the relay decided it (the give-up time counts from here).
    pub created_at: DateTime<Utc>,
    /// Pending: when it is tried next (during an attempt: when the attempt's claim expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered or given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The latest failed attempt's error (kept after a later delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A silence: alerts it matches are still recorded, never notified, while it is active.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Silence {
    /// `sil_...`
    pub id: String,
    /// Agent labels it matches (`*` matches every alert, also those about no agent).
    pub selector: Selector,
    /// Only alerts of this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Only alerts about this subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    /// Whether it is in force at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Whether it covers an alert with this rule, subject and agent labels.
    pub fn matches(&self, rule: &str, subject: &str, labels: &Labels) -> bool {
        self.rule.as_deref().is_none_or(|r| r == rule)
            && self.subject.as_deref().is_none_or(|s| s == subject)
            && self.selector.matches(labels)
    }
}

/// `POST /api/v1/silences`. Give `ends_at` or `duration_secs` (from `starts_at`, default now).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSilence {
    pub selector: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    #[serde(default)]
    pub comment: String,
}

/// `POST /api/v1/alerts/{id}/ack` (the body is optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Free text, kept in the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_matching() {
        let now = Utc::now();
        let s = Silence {
            id: "sil_1".into(),
            selector: "region=eu".parse().unwrap(),
            rule: Some("disk_full".into()),
            subject: None,
            starts_at: now - chrono::Duration::minutes(1),
            ends_at: now + chrono::Duration::hours(1),
            created_by: "admin".into(),
            created_at: now,
            comment: String::new(),
        };
        let eu: Labels = [("region".to_string(), "eu".to_string())].into();
        assert!(s.active_at(now));
        assert!(!s.active_at(now + chrono::Duration::hours(2)));
        assert!(s.matches("disk_full", "/", &eu));
        assert!(!s.matches("memory_high", "memory", &eu));
        assert!(!s.matches("disk_full", "/", &Labels::new()));
        assert_eq!("firing".parse::<AlertState>().unwrap(), AlertState::Firing);
        assert!("open".parse::<AlertState>().is_err());
    }
}
