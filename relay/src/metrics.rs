//! Process counters and their Prometheus text form (`GET /metrics`).
//!
//! Labels are bounded on purpose: outcomes and protocol error reasons are closed enumerations,
//! and nothing is labelled by agent, command or container id.

use flotilla_shared::api::DeliveryState;
use flotilla_shared::backup::BackupStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// Upper bounds (seconds) of `flotilla_http_request_duration_seconds`' buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One label set's histogram: per-bucket counts (not cumulative), count and sum.
#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The label set of a request: route template (bounded: the router's own), method (a closed
/// set) and status class.
type RequestKey = (String, &'static str, &'static str);

/// The closed set of method labels.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

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
    /// HTTP request latencies by route template, method and status class. The lock is held
    /// for one map lookup and a few additions, never across an await.
    requests: Mutex<BTreeMap<RequestKey, Histogram>>,
    /// Live-bus events the lifecycle notification task missed by falling behind.
    lifecycle_events_lost: AtomicU64,
    /// API requests answered 429 by the per-token or per-address limit.
    rate_limited: AtomicU64,
    /// TCP connections closed at accept: their address held `max_connections_per_address`.
    connections_refused: AtomicU64,
}

/// Figures that are read from live state when rendering rather than counted.
pub struct Gauges {
    pub connected_agents: usize,
    pub heartbeat_lag_secs: f64,
    /// Subscribers of the live event bus now: stream clients and the relay's own tasks.
    pub stream_clients: usize,
}

impl Metrics {
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn frame_out(&self) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
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

    /// Counts one answered HTTP request: `route` is the router's template (`/api/v1/agents/{id}`),
    /// never the request's own path, so the label set stays bounded.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let key = (
            route.to_string(),
            method_label(method),
            status_class(status),
        );
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(key).or_default();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            h.buckets[i] += 1;
        }
        h.count += 1;
        h.sum += seconds;
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
            "# HELP flotilla_build_info The relay's version and agent protocol version (always 1).\n\
             # TYPE flotilla_build_info gauge\n\
             flotilla_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
            label_value(env!("CARGO_PKG_VERSION")),
            flotilla_shared::PROTOCOL_VERSION
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_connected_agents Agents with an authenticated websocket now.\n\
             # TYPE flotilla_connected_agents gauge\nflotilla_connected_agents {}",
            gauges.connected_agents
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_stream_clients Subscribers of the live event stream now (clients, and the relay's own lifecycle-webhook task when configured).\n\
             # TYPE flotilla_stream_clients gauge\nflotilla_stream_clients {}",
            gauges.stream_clients
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
            "# HELP flotilla_http_rate_limited_total API requests refused with 429 by the per-token or per-address limit.\n\
             # TYPE flotilla_http_rate_limited_total counter\nflotilla_http_rate_limited_total {}",
            get(&self.rate_limited)
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_connections_refused_total TCP connections closed at accept because their address held max_connections_per_address.\n\
             # TYPE flotilla_connections_refused_total counter\nflotilla_connections_refused_total {}",
            get(&self.connections_refused)
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
        self.render_requests(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP flotilla_http_request_duration_seconds Time to answer an HTTP request (to the response head), by route template, method and status class; the agent websocket and the event stream are not counted.\n\
             # TYPE flotilla_http_request_duration_seconds histogram"
        );
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, method, status), h) in map.iter() {
            let labels = format!(
                "route=\"{}\",method=\"{method}\",status=\"{status}\"",
                label_value(route)
            );
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "flotilla_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "flotilla_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 flotilla_http_request_duration_seconds_sum{{{labels}}} {:.6}\n\
                 flotilla_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
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
            stream_clients: 4,
        });
        assert!(text.contains("flotilla_stream_clients 4\n"), "{text}");
        assert!(text.contains("flotilla_connected_agents 2\n"), "{text}");
        assert!(text.contains("flotilla_frames_in_total 1\n"), "{text}");
        assert!(text.contains("flotilla_commands_total{outcome=\"failed\"} 1\n"));
        assert!(text.contains("flotilla_commands_total{outcome=\"succeeded\"} 0\n"));
        assert!(text.contains("flotilla_protocol_errors_total{reason=\"malformed_frame\"} 1\n"));
        assert!(text.contains("flotilla_heartbeat_lag_seconds 1.500\n"));
        assert!(text.contains("flotilla_backup_databases_total{status=\"success\"} 3\n"));
        assert!(text.contains("flotilla_backup_databases_total{status=\"failed\"} 1\n"));
        assert!(text.contains(&format!(
            "flotilla_build_info{{version=\"{}\",protocol=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            flotilla_shared::PROTOCOL_VERSION
        )));
    }

    #[test]
    fn request_latencies_are_cumulative_histograms_by_template() {
        let m = Metrics::default();
        m.observe_request("/api/v1/agents/{id}", "GET", 200, 0.003);
        m.observe_request("/api/v1/agents/{id}", "GET", 204, 0.2);
        m.observe_request("/api/v1/agents/{id}", "GET", 404, 0.0005);
        m.observe_request("/api/v1/jobs", "BREW", 503, 30.0);
        let text = m.render(&Gauges {
            connected_agents: 0,
            heartbeat_lag_secs: 0.0,
            stream_clients: 0,
        });
        let series = "flotilla_http_request_duration_seconds";
        let ok = "route=\"/api/v1/agents/{id}\",method=\"GET\",status=\"2xx\"";
        for (le, n) in [
            ("0.001", 0),
            ("0.005", 1),
            ("0.1", 1),
            ("0.25", 2),
            ("+Inf", 2),
        ] {
            let line = format!("{series}_bucket{{{ok},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(&format!("{series}_count{{{ok}}} 2\n")));
        assert!(text.contains(&format!("{series}_sum{{{ok}}} 0.203000\n")));
        let missing = "route=\"/api/v1/agents/{id}\",method=\"GET\",status=\"4xx\"";
        assert!(text.contains(&format!("{series}_bucket{{{missing},le=\"0.001\"}} 1\n")));
        // Beyond the last bound: only in +Inf; an unknown method is `other`.
        let slow = "route=\"/api/v1/jobs\",method=\"other\",status=\"5xx\"";
        assert!(text.contains(&format!("{series}_bucket{{{slow},le=\"10\"}} 0\n")));
        assert!(text.contains(&format!("{series}_bucket{{{slow},le=\"+Inf\"}} 1\n")));
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
