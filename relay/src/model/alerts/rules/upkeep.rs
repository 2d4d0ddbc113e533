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
