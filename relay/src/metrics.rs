//! Process counters and their Prometheus text form (`GET /metrics`).
//!
//! Labels are bounded on purpose: outcomes and protocol error reasons are closed enumerations,
//! and nothing is labelled by agent, command or container id.

use flotilla_shared::api::DeliveryState;
use flotilla_shared::backup::BackupStatus;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the relay counted a protocol error on an agent connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    MalformedFrame,
    FrameTooLarge,
    AuthFailed,
    AuthTimeout,
    Revoked,
    UnsupportedVersion,
    UnexpectedFrame,
    UnknownDelivery,
    /// An agent websocket refused because `max_pending_handshakes` were authenticating.
    TooManyHandshakes,
}

impl ProtocolError {
    const ALL: [ProtocolError; 9] = [
        ProtocolError::MalformedFrame,
        ProtocolError::FrameTooLarge,
        ProtocolError::AuthFailed,
        ProtocolError::AuthTimeout,
        ProtocolError::Revoked,
        ProtocolError::UnsupportedVersion,
        ProtocolError::UnexpectedFrame,
        ProtocolError::UnknownDelivery,
        ProtocolError::TooManyHandshakes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::MalformedFrame => "malformed_frame",
            ProtocolError::FrameTooLarge => "frame_too_large",
            ProtocolError::AuthFailed => "auth_failed",
            ProtocolError::AuthTimeout => "auth_timeout",
            ProtocolError::Revoked => "revoked",
            ProtocolError::UnsupportedVersion => "unsupported_protocol_version",
            ProtocolError::UnexpectedFrame => "unexpected_frame",
            ProtocolError::UnknownDelivery => "unknown_delivery",
            ProtocolError::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

/// Command outcomes counted by `flotilla_commands_total`.
const OUTCOMES: [DeliveryState; 4] = [
    DeliveryState::Succeeded,
    DeliveryState::Failed,
    DeliveryState::Rejected,
    DeliveryState::Undelivered,
];

/// Database backup outcomes counted by `flotilla_backup_databases_total`.
const BACKUP_STATUSES: [BackupStatus; 2] = [BackupStatus::Success, BackupStatus::Failed];

#[derive(Default)]
pub struct Metrics {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    enrollments: AtomicU64,
    commands: [AtomicU64; 4],
    protocol_errors: [AtomicU64; ProtocolError::ALL.len()],
    backup_databases: [AtomicU64; BACKUP_STATUSES.len()],
    /// Firing alerts by severity (soft, medium, hard) as of the latest evaluation.
    alerts_firing: [AtomicU64; 3],
    /// Live-bus events the lifecycle notification task missed by falling behind.
    lifecycle_events_lost: AtomicU64,
}

/// Figures that are read from live state when rendering rather than counted.
pub struct Gauges {
    pub connected_agents: usize,
    pub heartbeat_lag_secs: f64,
}

impl Metrics {
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn frame_out(&self) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn enrollment(&self) {
        self.enrollments.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a delivery reaching a final state (skipped is not a command outcome).
    pub fn command_outcome(&self, state: DeliveryState) {
        if let Some(i) = OUTCOMES.iter().position(|s| *s == state) {
            self.commands[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` database backups (from agents' reports, each stored once) with this status.
    pub fn backup_databases(&self, status: BackupStatus, n: u64) {
        let i = BACKUP_STATUSES
            .iter()
            .position(|s| *s == status)
            .expect("every status is listed");
        self.backup_databases[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the firing alerts gauge (soft, medium, hard) after an evaluation.
    pub fn set_alerts_firing(&self, firing: [usize; 3]) {
        for (gauge, n) in self.alerts_firing.iter().zip(firing) {
            gauge.store(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts `n` bus events the lifecycle notification task skipped after lagging.
    pub fn lifecycle_events_lost(&self, n: u64) {
        self.lifecycle_events_lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn lifecycle_events_lost_total(&self) -> u64 {
        self.lifecycle_events_lost.load(Ordering::Relaxed)
    }

    pub fn protocol_error(&self, reason: ProtocolError) {
        let i = ProtocolError::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.protocol_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn protocol_errors(&self, reason: ProtocolError) -> u64 {
        let i = ProtocolError::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.protocol_errors[i].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP flotilla_connected_agents Agents with an authenticated websocket now.\n\
             # TYPE flotilla_connected_agents gauge\nflotilla_connected_agents {}",
            gauges.connected_agents
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_frames_in_total Websocket frames received from agents.\n\
             # TYPE flotilla_frames_in_total counter\nflotilla_frames_in_total {}",
            get(&self.frames_in)
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_frames_out_total Websocket frames sent to agents.\n\
             # TYPE flotilla_frames_out_total counter\nflotilla_frames_out_total {}",
            get(&self.frames_out)
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_commands_total Command deliveries that reached a final outcome.\n\
             # TYPE flotilla_commands_total counter"
        );
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "flotilla_commands_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                get(&self.commands[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_heartbeat_lag_seconds Age of the oldest latest heartbeat among connected agents.\n\
             # TYPE flotilla_heartbeat_lag_seconds gauge\nflotilla_heartbeat_lag_seconds {:.3}",
            gauges.heartbeat_lag_secs
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_enrollments_total Agents enrolled.\n\
             # TYPE flotilla_enrollments_total counter\nflotilla_enrollments_total {}",
            get(&self.enrollments)
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_protocol_errors_total Protocol errors on agent connections.\n\
             # TYPE flotilla_protocol_errors_total counter"
        );
        for (i, reason) in ProtocolError::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "flotilla_protocol_errors_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                get(&self.protocol_errors[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_backup_databases_total Database backups agents reported, by status.\n\
             # TYPE flotilla_backup_databases_total counter"
        );
        for (i, status) in BACKUP_STATUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "flotilla_backup_databases_total{{status=\"{}\"}} {}",
                status.as_str(),
                get(&self.backup_databases[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_lifecycle_events_lost_total Live event bus events the lifecycle \
             notifications missed by falling behind (each may have been a notification).\n\
             # TYPE flotilla_lifecycle_events_lost_total counter\nflotilla_lifecycle_events_lost_total {}",
            get(&self.lifecycle_events_lost)
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_alerts_firing Alerts firing now, by severity.\n\
             # TYPE flotilla_alerts_firing gauge"
        );
        for (i, severity) in flotilla_shared::alert::Severity::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "flotilla_alerts_firing{{severity=\"{}\"}} {}",
                severity.as_str(),
                get(&self.alerts_firing[i])
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels() {
        let m = Metrics::default();
        m.frame_in();
        m.command_outcome(DeliveryState::Failed);
        m.command_outcome(DeliveryState::Skipped);
        m.protocol_error(ProtocolError::MalformedFrame);
        m.backup_databases(BackupStatus::Success, 3);
        m.backup_databases(BackupStatus::Failed, 1);
        let text = m.render(&Gauges {
            connected_agents: 2,
            heartbeat_lag_secs: 1.5,
        });
        assert!(text.contains("flotilla_connected_agents 2\n"), "{text}");
        assert!(text.contains("flotilla_frames_in_total 1\n"), "{text}");
        assert!(text.contains("flotilla_commands_total{outcome=\"failed\"} 1\n"));
        assert!(text.contains("flotilla_commands_total{outcome=\"succeeded\"} 0\n"));
        assert!(text.contains("flotilla_protocol_errors_total{reason=\"malformed_frame\"} 1\n"));
        assert!(text.contains("flotilla_heartbeat_lag_seconds 1.500\n"));
        assert!(text.contains("flotilla_backup_databases_total{status=\"success\"} 3\n"));
        assert!(text.contains("flotilla_backup_databases_total{status=\"failed\"} 1\n"));
    }
}
