//! The `[alerts]` section of relay.toml: evaluation cadence, thresholds, TLS endpoints, and
//! per-rule overrides (`[alerts.rules.<rule>]`: enabled, severity, threshold).

use super::rule::{Rule, RULES};
use flotilla_shared::alert::Severity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[alerts]` of relay.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Runs the alerts engine at all.
    pub enabled: bool,
    /// Seconds between two evaluations of every rule.
    pub evaluate_interval_secs: u64,
    /// An agent that is not connected and sent no heartbeat for more than this many heartbeat
    /// intervals is unreachable.
    pub unreachable_intervals: u32,
    /// A filesystem fuller than this (percent) is `disk_full`.
    pub disk_percent: u32,
    /// Memory use above this (percent) is `memory_high`.
    pub memory_percent: u32,
    /// A `container.restart_loop` event keeps its alert this long (seconds) unless the
    /// container is seen running normally after it.
    pub restart_loop_window_secs: u64,
    /// How far back (hours) container died/OOM events are looked at.
    pub container_event_hours: u32,
    /// A `container_died` / `container_oom` alert holds at least this long (seconds) after its
    /// latest event, and until the container is seen running, so a container its restart
    /// policy brings back at once still notifies (0: only until it is seen running).
    pub event_hold_secs: u64,
    /// A firing `disk_full` / `memory_high` alert resolves only once the value is at least this
    /// many percentage points below the threshold (hysteresis against flapping).
    pub hysteresis_percent: u32,
    /// A rolled-back or failed-rollback update, or an aborted rollout, alerts for this many hours
    /// (or until a later update of that container succeeds).
    pub update_alert_hours: u32,
    /// A medium alert is notified once its condition has lasted this many seconds.
    pub medium_notify_after_secs: u64,
    /// A notification not delivered this many seconds after it was decided is given up on its
    /// channel (retried with backoff until then, across relay restarts), which raises
    /// `notification_failed`.
    pub notify_give_up_after_secs: u64,
    /// Base of the links in notifications (`<public_url>/api/v1/alerts/<id>`), and the relay
    /// URL written into the `/install.sh` the relay serves; empty: `http://<listen>` for links,
    /// the address the request reached the relay by for install.sh.
    pub public_url: String,
    /// `host:port` endpoints whose TLS certificate is watched (`tls_expiry`).
    pub tls_endpoints: Vec<String>,
    /// Seconds between two checks of the TLS endpoints.
    pub tls_check_interval_secs: u64,
    /// A certificate expiring in fewer days than this alerts.
    pub tls_warn_days: u32,
    /// Connect + handshake deadline of one TLS check, in seconds.
    pub tls_timeout_secs: u64,
    /// Per-rule overrides, keyed by rule name.
    pub rules: BTreeMap<String, RuleOverride>,

    // --- issue 17 §2: certificates the agents read on their hosts ---
    /// `certificate_expiry`: a host certificate expiring in fewer days than this alerts
    /// (medium).
    pub certificate_warn_days: u32,
    /// `certificate_expiry`: fewer days than this (or expired) is hard.
    pub certificate_hard_days: u32,
}

/// `[alerts.rules.<rule>]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// The rule's threshold, replacing the section-wide one: percent for `disk_full` and
    /// `memory_high`, heartbeat intervals for `agent_unreachable`, days for `tls_expiry` and
    /// `certificate_expiry` (its warning days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            evaluate_interval_secs: 15,
            unreachable_intervals: 3,
            disk_percent: 85,
            memory_percent: 90,
            restart_loop_window_secs: 600,
            container_event_hours: 24,
            event_hold_secs: 600,
            hysteresis_percent: 3,
            update_alert_hours: 24,
            medium_notify_after_secs: 300,
            notify_give_up_after_secs: 24 * 3600,
            public_url: String::new(),
            tls_endpoints: Vec::new(),
            tls_check_interval_secs: 6 * 3600,
            tls_warn_days: 14,
            tls_timeout_secs: 10,
            rules: BTreeMap::new(),
            certificate_warn_days: 14,
            certificate_hard_days: 3,
        }
    }
}

impl AlertsConfig {
    /// Checks ranges and rule names; the error names the key (`alerts.<key>`) and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String, &'static str)> {
        let bad = |key: &str, value: String, expected: &'static str| {
            Err((format!("alerts.{key}"), value, expected))
        };
        if !(1..=86_400).contains(&self.evaluate_interval_secs) {
            return bad(
                "evaluate_interval_secs",
                self.evaluate_interval_secs.to_string(),
                "expected 1 to 86400 seconds",
            );
        }
        if !(1..=1000).contains(&self.unreachable_intervals) {
            return bad(
                "unreachable_intervals",
                self.unreachable_intervals.to_string(),
                "expected 1 to 1000 intervals",
            );
        }
        for (key, v) in [
            ("disk_percent", self.disk_percent),
            ("memory_percent", self.memory_percent),
        ] {
            if !(1..=100).contains(&v) {
                return bad(key, v.to_string(), "expected a percentage from 1 to 100");
            }
        }
        if !(1..=30 * 86_400).contains(&self.notify_give_up_after_secs) {
            return bad(
                "notify_give_up_after_secs",
                self.notify_give_up_after_secs.to_string(),
                "expected 1 to 2592000 seconds (30 days)",
            );
        }
        if self.hysteresis_percent > 50 {
            return bad(
                "hysteresis_percent",
                self.hysteresis_percent.to_string(),
                "expected 0 to 50 percentage points",
            );
        }
        if self.event_hold_secs > 30 * 86_400 {
            return bad(
                "event_hold_secs",
                self.event_hold_secs.to_string(),
                "expected 0 to 2592000 seconds (30 days)",
            );
        }
        if self.tls_check_interval_secs == 0 {
            return bad(
                "tls_check_interval_secs",
                "0".into(),
                "expected at least 1 second",
            );
        }
        if !(1..=300).contains(&self.tls_timeout_secs) {
            return bad(
                "tls_timeout_secs",
                self.tls_timeout_secs.to_string(),
                "expected 1 to 300 seconds",
            );
        }
        for e in &self.tls_endpoints {
            if split_endpoint(e).is_none() {
                return bad("tls_endpoints", e.clone(), "expected host:port entries");
            }
        }
        if !(1..=365).contains(&self.certificate_warn_days) {
            return bad(
                "certificate_warn_days",
                self.certificate_warn_days.to_string(),
                "expected 1 to 365 days",
            );
        }
        if self.certificate_hard_days > self.certificate_warn_days {
            return bad(
                "certificate_hard_days",
                self.certificate_hard_days.to_string(),
                "expected at most certificate_warn_days",
            );
        }
        let url = self.public_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad(
                "public_url",
                self.public_url.clone(),
                "expected an http:// or https:// URL, or empty",
            );
        }
        for name in self.rules.keys() {
            if Rule::parse(name).is_none() {
                return bad(
                    &format!("rules.{name}"),
                    name.clone(),
                    "unknown rule name (see packaging/relay.toml for the list)",
                );
            }
        }
        Ok(())
    }

    /// Whether the rule runs.
    pub fn enabled(&self, rule: Rule) -> bool {
        self.rules
            .get(rule.as_str())
            .and_then(|o| o.enabled)
            .unwrap_or(true)
    }

    /// The rule's severity: configured, else its default.
    pub fn severity(&self, rule: Rule) -> Severity {
        self.rules
            .get(rule.as_str())
            .and_then(|o| o.severity)
            .unwrap_or_else(|| rule.default_severity())
    }

    /// The rule's own threshold if configured, else `default`.
    pub fn threshold(&self, rule: Rule, default: u32) -> u32 {
        self.rules
            .get(rule.as_str())
            .and_then(|o| o.threshold)
            .unwrap_or(default)
    }

    pub fn evaluate_interval(&self) -> Duration {
        Duration::from_secs(self.evaluate_interval_secs)
    }

    /// Every known rule with its effective enabled flag and severity (for docs and tests).
    pub fn effective(&self) -> Vec<(Rule, bool, Severity)> {
        RULES
            .iter()
            .map(|r| (*r, self.enabled(*r), self.severity(*r)))
            .collect()
    }
}

/// `host:port` → (host, port); None when it is not of that form. IPv6 as `[::1]:443`.
pub fn split_endpoint(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}
