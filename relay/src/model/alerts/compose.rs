//! `compose_drift` (soft): a compose container whose running image is not what its project's
//! files declare (the agent reports it in the heartbeat), so the next `docker-compose up -d`
//! would change it; or whose files the agent cannot read. Subject: the container's name;
//! resolved when the heartbeat no longer reports it.

use super::config::AlertsConfig;
use super::rules::{AgentView, Condition, Rule};

/// One condition per drifted container of the agent's latest heartbeat.
pub fn drift_conditions(cfg: &AlertsConfig, agent: &AgentView) -> Vec<Condition> {
    if agent.revoked || !cfg.enabled(Rule::ComposeDrift) {
        return Vec::new();
    }
    let Some((hb, _)) = &agent.heartbeat else {
        return Vec::new();
    };
    hb.compose_drift
        .iter()
        .map(|d| {
            let message = match (&d.declared_image, &d.problem) {
                (Some(declared), _) => format!(
                    "{} (compose project {}, service {}) runs {} but its project declares {}: \
                     the next `docker-compose up -d` would change it",
                    d.container, d.project, d.service, d.running_image, declared
                ),
                (None, problem) => format!(
                    "{} (compose project {}, service {}): its project's files cannot be read: {}",
                    d.container,
                    d.project,
                    d.service,
                    problem.as_deref().unwrap_or("unknown problem")
                ),
            };
            Condition::new(
                cfg,
                Some(&agent.id),
                Rule::ComposeDrift,
                d.container.clone(),
                message,
                None,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use flotilla_shared::alert::Severity;
    use flotilla_shared::compose::ComposeDrift;
    use flotilla_shared::heartbeat::Heartbeat;
    use std::sync::Arc;

    #[test]
    fn each_drifted_container_is_a_soft_condition() {
        let hb = Heartbeat {
            at: Utc::now(),
            agent_version: "1".into(),
            host: Default::default(),
            docker: Default::default(),
            backup: None,
            compose_drift: vec![ComposeDrift {
                container: "shop_web_1".into(),
                project: "shop".into(),
                service: "web".into(),
                running_image: "app:v2".into(),
                declared_image: Some("app:v1".into()),
                problem: None,
            }],
        };
        let agent = AgentView {
            id: "agt_1".into(),
            name: "a".into(),
            labels: Default::default(),
            revoked: false,
            connected: true,
            enrolled_at: Utc::now(),
            heartbeat: Some((Arc::new(hb), Utc::now())),
            last_heartbeat_at: None,
            agent_version: "1".into(),
        };
        let cfg = AlertsConfig::default();
        let c = drift_conditions(&cfg, &agent);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].rule, Rule::ComposeDrift);
        assert_eq!(c[0].severity, Severity::Soft);
        assert_eq!(c[0].subject, "shop_web_1");
        assert!(c[0].message.contains("declares app:v1"), "{}", c[0].message);
        let mut revoked = agent.clone();
        revoked.revoked = true;
        assert!(drift_conditions(&cfg, &revoked).is_empty());
    }
}
