//! Rules of issue 17 part 6: `container_memory_high` (a container that has stayed above 90 %
//! of its memory limit for the rule's threshold in minutes, 5 by default; the agent reports
//! since when, `memory_near_limit_since`, so a relay restart does not restart the clock) and
//! `container_autohealed` (the agent's auto-heal restarted a container; held for
//! `event_hold_secs` after the latest restart).

use super::{AgentView, Condition, Rule};
use crate::model::alerts::config::AlertsConfig;
use chrono::{DateTime, Duration, Utc};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::upkeep::MEMORY_NEAR_LIMIT_PERCENT;
use std::collections::BTreeMap;

/// Default of `[alerts.rules.container_memory_high] threshold`, in minutes.
pub const CONTAINER_MEMORY_MINUTES: u32 = 5;

/// `container_memory_high` per container of the agent's latest heartbeat (subject: container
/// name) that has been near its memory limit for the threshold's minutes.
pub fn container_memory_conditions(
    cfg: &AlertsConfig,
    agent: &AgentView,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let Some((hb, _)) = agent.heartbeat.as_ref().filter(|_| !agent.revoked) else {
        return out;
    };
    let after = Duration::minutes(i64::from(
        cfg.threshold(Rule::ContainerMemoryHigh, CONTAINER_MEMORY_MINUTES),
    ));
    for c in &hb.docker.containers {
        let Some(r) = &c.resources else { continue };
        let (Some(since), Some(percent), Some(limit)) = (
            r.memory_near_limit_since,
            r.memory_percent_of_limit(),
            r.memory_limit_bytes,
        ) else {
            continue;
        };
        if now - since < after || hb.at - since < after {
            continue;
        }
        out.push(Condition::new(
            cfg,
            Some(&agent.id),
            Rule::ContainerMemoryHigh,
            c.name.clone(),
            format!(
                "container {} on {} has used more than {MEMORY_NEAR_LIMIT_PERCENT:.0} % of its \
                 memory limit since {} (now {percent:.0} % of {} MiB)",
                c.name,
                agent.name,
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                limit / (1024 * 1024)
            ),
            Some(since + after),
        ));
    }
    out
}

/// `container_autohealed` per container auto-heal restarted within `event_hold_secs`
/// (`events`: the agent's recent events, any kinds; subject: container name).
pub fn autoheal_conditions(
    cfg: &AlertsConfig,
    agent: &AgentView,
    events: &[AgentEvent],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    if agent.revoked {
        return Vec::new();
    }
    let hold = Duration::seconds(cfg.event_hold_secs.clamp(60, 86_400) as i64);
    let mut latest: BTreeMap<&str, &AgentEvent> = BTreeMap::new();
    for e in events {
        if e.kind != EventKind::ContainerAutoheal || now - e.at >= hold {
            continue;
        }
        if let Some(name) = e.container_name.as_deref() {
            let newer = latest.get(name).is_none_or(|old| old.at <= e.at);
            if newer {
                latest.insert(name, e);
            }
        }
    }
    latest
        .into_iter()
        .map(|(name, e)| {
            Condition::new(
                cfg,
                Some(&agent.id),
                Rule::ContainerAutohealed,
                name,
                format!("{} (on {})", e.message, agent.name),
                Some(e.at),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::alerts::config::RuleOverride;
    use flotilla_shared::command::ContainerInfo;
    use flotilla_shared::heartbeat::{DockerSnapshot, Heartbeat, HostMetrics};
    use flotilla_shared::selector::Labels;
    use flotilla_shared::upkeep::ContainerResources;
    use std::sync::Arc;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn container(name: &str, resources: Option<ContainerResources>) -> ContainerInfo {
        ContainerInfo {
            id: format!("{name}-id"),
            name: name.into(),
            image: "img".into(),
            image_id: "sha256:1".into(),
            state: "running".into(),
            status: String::new(),
            health: None,
            restart_count: 0,
            oom_killed: false,
            exit_code: None,
            started_at: None,
            compose_project: None,
            compose_service: None,
            resources,
        }
    }

    fn agent(at: DateTime<Utc>, containers: Vec<ContainerInfo>) -> AgentView {
        let hb = Heartbeat {
            at,
            agent_version: "1.0.0".into(),
            host: HostMetrics::default(),
            docker: DockerSnapshot {
                containers,
                ..DockerSnapshot::default()
            },
            backup: None,
            compose_drift: Vec::new(),
        };
        AgentView {
            id: "a1".into(),
            name: "host-1".into(),
            labels: Labels::new(),
            revoked: false,
            connected: true,
            enrolled_at: t(-1000),
            heartbeat: Some((Arc::new(hb), at)),
            last_heartbeat_at: None,
            agent_version: "1.0.0".into(),
        }
    }

    fn near(since: Option<DateTime<Utc>>, used: u64) -> Option<ContainerResources> {
        Some(ContainerResources {
            memory_bytes: used,
            memory_limit_bytes: Some(1000 * 1024 * 1024),
            cpu_percent: Some(1.0),
            memory_near_limit_since: since,
        })
    }

    #[test]
    fn memory_near_the_limit_alerts_only_after_the_threshold_minutes() {
        let cfg = AlertsConfig::default();
        let a = agent(
            t(600),
            vec![
                container("web", near(Some(t(0)), 950 * 1024 * 1024)),
                container("api", near(Some(t(400)), 950 * 1024 * 1024)),
                container("db", near(None, 100)),
                container("free", None),
            ],
        );
        let c = container_memory_conditions(&cfg, &a, t(600));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].subject, "web");
        assert_eq!(c[0].rule, Rule::ContainerMemoryHigh);
        assert_eq!(c[0].severity, flotilla_shared::alert::Severity::Medium);
        assert_eq!(c[0].since, Some(t(300)));
        assert!(
            c[0].message.contains("95 % of 1000 MiB"),
            "{}",
            c[0].message
        );
        // The threshold is the rule's minutes.
        let mut cfg = AlertsConfig::default();
        cfg.rules.insert(
            "container_memory_high".into(),
            RuleOverride {
                threshold: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(container_memory_conditions(&cfg, &a, t(600)).len(), 2);
    }

    #[test]
    fn autoheal_restarts_alert_for_the_hold() {
        let cfg = AlertsConfig::default();
        let a = agent(t(0), vec![]);
        let ev = |at: i64, name: &str| AgentEvent {
            kind: EventKind::ContainerAutoheal,
            at: t(at),
            container_id: None,
            container_name: Some(name.into()),
            message: format!("container {name} was unhealthy for 300 s; auto-heal restarted it"),
            attributes: Default::default(),
        };
        let events = vec![ev(0, "web"), ev(100, "web"), ev(-5000, "old")];
        let c = autoheal_conditions(&cfg, &a, &events, t(200));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].subject, "web");
        assert_eq!(c[0].since, Some(t(100)));
        assert!(c[0].message.contains("(on host-1)"));
        assert!(autoheal_conditions(&cfg, &a, &events, t(100 + 600)).is_empty());
    }
}
