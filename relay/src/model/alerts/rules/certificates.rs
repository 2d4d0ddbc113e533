//! `certificate_expiry` (issue 17 §2): the certificates an agent read on its host (files and
//! local TLS endpoints, `host.certificates` of its heartbeat), one condition per agent and
//! certificate (subject: the file's path or the endpoint). Fewer than `certificate_warn_days`
//! left is medium, fewer than `certificate_hard_days` or expired is hard, a certificate the
//! agent could not read is soft (shown, never notified); a configured severity applies to all.
//! The condition goes once a renewed certificate is read (the next reading after renewal).

use super::{human, AgentView, AlertsConfig, Condition, Rule};
use chrono::{DateTime, Duration, Utc};
use flotilla_shared::alert::Severity;
use flotilla_shared::heartbeat::CertificateSourceKind;

/// The certificate conditions of one agent's latest heartbeat.
pub fn certificate_conditions(
    cfg: &AlertsConfig,
    agent: &AgentView,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let Some((hb, _)) = agent.heartbeat.as_ref().filter(|_| !agent.revoked) else {
        return Vec::new();
    };
    let warn_days = cfg.threshold(Rule::CertificateExpiry, cfg.certificate_warn_days);
    let hard_days = cfg.certificate_hard_days.min(warn_days);
    let configured = cfg
        .rules
        .get(Rule::CertificateExpiry.as_str())
        .and_then(|o| o.severity);
    let mut out = Vec::new();
    for c in &hb.host.certificates {
        let what = match c.kind {
            CertificateSourceKind::File => format!("certificate {}", c.source),
            CertificateSourceKind::Endpoint => format!("TLS endpoint {}", c.source),
        };
        let (severity, message) = match (c.not_after, &c.warning) {
            (None, warning) => (
                Severity::Soft,
                format!(
                    "cannot read {what} on {}: {}",
                    agent.name,
                    warning.as_deref().unwrap_or("no certificate")
                ),
            ),
            (Some(not_after), _) => {
                let left = not_after - now;
                let issuer = c
                    .issuer
                    .as_deref()
                    .map(|i| format!(", issuer {i}"))
                    .unwrap_or_default();
                if not_after <= now {
                    (
                        Severity::Hard,
                        format!(
                            "{what} on {} ({}{issuer}) expired at {}",
                            agent.name,
                            c.names(),
                            not_after.format("%Y-%m-%d %H:%M UTC")
                        ),
                    )
                } else if left < Duration::days(i64::from(warn_days)) {
                    let severity = if left < Duration::days(i64::from(hard_days)) {
                        Severity::Hard
                    } else {
                        Severity::Medium
                    };
                    (
                        severity,
                        format!(
                            "{what} on {} ({}{issuer}) expires in {} (at {})",
                            agent.name,
                            c.names(),
                            human(left),
                            not_after.format("%Y-%m-%d %H:%M UTC")
                        ),
                    )
                } else {
                    continue;
                }
            }
        };
        let mut condition = Condition::new(
            cfg,
            Some(&agent.id),
            Rule::CertificateExpiry,
            c.source.clone(),
            message,
            None,
        );
        condition.severity = configured.unwrap_or(severity);
        out.push(condition);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shared::heartbeat::{Heartbeat, HostCertificate, HostMetrics};
    use std::sync::Arc;

    fn agent(certificates: Vec<HostCertificate>, now: DateTime<Utc>) -> AgentView {
        let hb = Heartbeat {
            at: now,
            agent_version: "1.0.0".into(),
            host: HostMetrics {
                certificates,
                ..HostMetrics::default()
            },
            docker: Default::default(),
            backup: None,
            compose_drift: Vec::new(),
        };
        AgentView {
            id: "agt_1".into(),
            name: "shop-vps".into(),
            labels: Default::default(),
            revoked: false,
            connected: true,
            enrolled_at: now,
            heartbeat: Some((Arc::new(hb), now)),
            last_heartbeat_at: Some(now),
            agent_version: "1.0.0".into(),
        }
    }

    fn cert(source: &str, not_after: Option<DateTime<Utc>>, now: DateTime<Utc>) -> HostCertificate {
        HostCertificate {
            kind: CertificateSourceKind::File,
            source: source.into(),
            subject: Some("shop.example.com".into()),
            sans: vec!["shop.example.com".into(), "*.shop.example.com".into()],
            issuer: Some("R11".into()),
            not_after,
            warning: not_after
                .is_none()
                .then(|| "no certificate in the file".to_string()),
            checked_at: now,
        }
    }

    #[test]
    fn severities_follow_the_days_left() {
        let now = Utc::now();
        let days = |d: i64| Some(now + Duration::days(d));
        let a = agent(
            vec![
                cert("/a.pem", days(5), now),
                cert("/b.pem", days(2), now),
                cert("/c.pem", days(-1), now),
                cert("/d.pem", days(90), now),
                cert("/e.pem", None, now),
            ],
            now,
        );
        let cfg = AlertsConfig::default();
        let got = certificate_conditions(&cfg, &a, now);
        let by: Vec<(&str, Severity)> = got
            .iter()
            .map(|c| (c.subject.as_str(), c.severity))
            .collect();
        assert_eq!(
            by,
            [
                ("/a.pem", Severity::Medium),
                ("/b.pem", Severity::Hard),
                ("/c.pem", Severity::Hard),
                ("/e.pem", Severity::Soft),
            ]
        );
        assert!(got[0].message.contains("shop-vps"), "{}", got[0].message);
        assert!(got[0].message.contains("/a.pem"));
        assert!(
            got[0].message.contains("expires in 4d") || got[0].message.contains("expires in 5d")
        );
        assert!(got[0].message.contains("(+1 names)"), "{}", got[0].message);
        assert!(got[2].message.contains("expired"));
        assert!(got[3].message.contains("cannot read"));
        assert_eq!(got[0].rule, Rule::CertificateExpiry);
        assert_eq!(got[0].agent_id.as_deref(), Some("agt_1"));

        // A configured severity applies to every condition of the rule.
        let mut cfg = AlertsConfig::default();
        cfg.rules.insert(
            "certificate_expiry".into(),
            crate::model::alerts::RuleOverride {
                severity: Some(Severity::Soft),
                threshold: Some(30),
                enabled: None,
            },
        );
        let got = certificate_conditions(&cfg, &a, now);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|c| c.severity == Severity::Soft));

        let mut revoked = a.clone();
        revoked.revoked = true;
        assert!(certificate_conditions(&AlertsConfig::default(), &revoked, now).is_empty());
    }
}
