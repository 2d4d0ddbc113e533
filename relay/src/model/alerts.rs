//! The alerts' pure model: the rules that turn fleet state into conditions ([`rules`]), the
//! `[alerts]` settings they read ([`config`]), and the types the store's alert transaction
//! takes and returns (the policy of one evaluation, the API's filter, what it changed and
//! which notifications it decided). The engine (`crate::alerts`) gathers the inputs and hands
//! the decisions to the notifier; the store applies them; neither is imported here.

pub mod config;
pub mod outbox;
pub mod rule;
pub mod rules;
// --- compose (issue 17, part 1) ---
pub mod compose;

pub use config::{AlertsConfig, RuleOverride};

use chrono::{DateTime, Utc};
use flotilla_shared::alert::{AlertInfo, AlertState, Severity};
use rules::Rule;
use serde::{Deserialize, Serialize};

/// What happened to the alert that this notification announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// The alert started notifying (webhook event `alert.firing`).
    Firing,
    /// A notified alert's condition cleared (webhook event `alert.resolved`).
    Resolved,
}

impl NotificationKind {
    /// `firing` / `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Firing => "firing",
            NotificationKind::Resolved => "resolved",
        }
    }
}

/// What the diff and the notification decision need.
#[derive(Clone, Debug)]
pub struct AlertPolicy {
    /// Where decided notifications are written (one outbox row per channel that takes one).
    pub outbox: outbox::OutboxPolicy,
    pub now: DateTime<Utc>,
    /// A medium alert notifies once its condition is this old.
    pub medium_after: chrono::Duration,
    /// Rules whose source is not ready yet (see `crate::alerts::held_rules`): their firing alerts are kept
    /// as they are (neither resolved nor refreshed) and their new conditions wait.
    pub held: Vec<Rule>,
}

/// Filter of `GET /api/v1/alerts`.
#[derive(Clone, Debug, Default)]
pub struct AlertQuery {
    pub state: Option<AlertState>,
    pub severity: Option<Severity>,
    pub agent_id: Option<String>,
    pub rule: Option<String>,
    pub limit: u32,
}

/// What one evaluation changed and decided.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Notifications decided (already written to the outbox, one row per channel taking it).
    pub notify: Vec<(NotificationKind, AlertInfo)>,
    /// Outbox rows written, and how many of them were given up at once (a full queue).
    pub queued: usize,
    pub dropped: usize,
    /// Firing alerts after the evaluation, by severity (soft, medium, hard).
    pub firing: [usize; 3],
    /// Alerts that started firing now.
    pub fired: usize,
    /// Alerts that resolved now.
    pub resolved: usize,
    /// Every alert that fired or resolved now, notified or not (the live event stream's
    /// `alert.firing` / `alert.resolved`, published by the engine's run loop).
    pub changes: Vec<AlertChange>,
}

/// One alert that fired or resolved in an evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertChange {
    pub kind: NotificationKind,
    pub id: String,
    pub agent_id: Option<String>,
    pub rule: String,
    pub subject: String,
    pub severity: String,
    pub message: String,
}
