//! The alert rules and their sources: small functions that turn the fleet's state (agents,
//! heartbeats, events, backups, updates, rollouts, TLS checks) into the set of conditions that
//! hold now. They are pure: the engine gathers the inputs, these decide, so unit tests feed
//! them crafted data.

use super::config::AlertsConfig;
pub use super::rule::Rule;
use chrono::{DateTime, Duration, Utc};
use flotilla_shared::alert::Severity;
use flotilla_shared::backup::{agent_alert, BackupAlertLevel, DatabaseBackupState, DatabaseState};
use flotilla_shared::heartbeat::{AgentEvent, EventKind, Heartbeat};
use flotilla_shared::selector::Labels;
use flotilla_shared::update::UpdateOutcome;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A condition that holds now. The engine turns the set of them into firing/resolved alerts,
/// deduplicated per (agent, rule, subject).
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub agent_id: Option<String>,
    /// Filled in by the engine from the agent's record.
    pub agent_name: Option<String>,
    pub agent_labels: Labels,
    pub rule: Rule,
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    /// When the condition started, when known (else the alert's start is when it was recorded).
    pub since: Option<DateTime<Utc>>,
}

impl Condition {
    pub(super) fn new(
        cfg: &AlertsConfig,
        agent_id: Option<&str>,
        rule: Rule,
        subject: impl Into<String>,
        message: String,
        since: Option<DateTime<Utc>>,
    ) -> Condition {
        Condition {
            agent_id: agent_id.map(str::to_string),
            agent_name: None,
            agent_labels: Labels::new(),
            rule,
            subject: subject.into(),
            severity: cfg.severity(rule),
            message: cap_message(message),
            since,
        }
    }

    /// The deduplication key: (agent id or "", rule, subject).
    pub fn key(&self) -> (String, &'static str, String) {
        (
            self.agent_id.clone().unwrap_or_default(),
            self.rule.as_str(),
            self.subject.clone(),
        )
    }
}

/// Longest condition message, in characters (agents control parts of it).
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// Cuts a message to [`MAX_MESSAGE_CHARS`] characters (on a char boundary, marked with `…`).
pub fn cap_message(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS - 1) {
        if message[cut..].chars().nth(1).is_some() {
            message.truncate(cut);
            message.push('…');
        }
    }
    message
}

/// Keys (agent id or "", rule, subject) of the alerts firing before this evaluation (for
/// hysteresis).
pub type FiringKeys = HashSet<(String, String, String)>;

/// What the sources need to know about one agent.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub revoked: bool,
    pub connected: bool,
    pub enrolled_at: DateTime<Utc>,
    /// The newest heartbeat (cache, else the stored one) and when it was received.
    pub heartbeat: Option<(Arc<Heartbeat>, DateTime<Utc>)>,
    /// The stored `last_heartbeat_at` (used when the cache has none).
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// The version it reported at its latest connect.
    pub agent_version: String,
}

impl AgentView {
    fn last_seen(&self) -> DateTime<Utc> {
        self.heartbeat
            .as_ref()
            .map(|(_, at)| *at)
            .or(self.last_heartbeat_at)
            .unwrap_or(self.enrolled_at)
    }

    /// The version of its latest heartbeat, else of its latest connect.
    pub fn version(&self) -> &str {
        self.heartbeat
            .as_ref()
            .map(|(hb, _)| hb.agent_version.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(&self.agent_version)
    }
}

fn human(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    if s >= 86_400 {
        format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

// === agent_unreachable ===

/// Every agent that is not revoked, not connected, and whose last heartbeat (or, without one,
/// its enrollment) is older than `after`. The relay cannot have heard from anybody while it was
/// down, so nothing counts as older than `relay_started_at`.
pub fn agent_unreachable(
    cfg: &AlertsConfig,
    agents: &[AgentView],
    after: std::time::Duration,
    relay_started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let after = Duration::from_std(after).unwrap_or(Duration::days(365));
    agents
        .iter()
        .filter(|a| !a.revoked && !a.connected)
        .filter_map(|a| {
            let last = a.last_seen();
            let counted_from = last.max(relay_started_at);
            if now - counted_from <= after {
                return None;
            }
            Some(Condition::new(
                cfg,
                Some(&a.id),
                Rule::AgentUnreachable,
                "agent",
                format!(
                    "agent {} is not connected and sent no heartbeat for {} (last at {})",
                    a.name,
                    human(now - last),
                    last.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                Some(counted_from + after),
            ))
        })
        .collect()
}

// === disk_full, memory_high ===

/// Filesystems fuller than the threshold (subject: mount point) and memory above its threshold
/// (subject `memory`), from the agent's latest heartbeat. An alert already firing (in
/// `firing`) holds until the value is `hysteresis_percent` below the threshold.
pub fn host_conditions(
    cfg: &AlertsConfig,
    agent: &AgentView,
    firing: &FiringKeys,
) -> Vec<Condition> {
    let mut out = Vec::new();
    if agent.revoked {
        return out;
    }
    let Some((hb, _)) = &agent.heartbeat else {
        return out;
    };
    let hysteresis = cfg.hysteresis_percent as f32;
    let is_firing = |rule: Rule, subject: &str| {
        firing.contains(&(
            agent.id.clone(),
            rule.as_str().to_string(),
            subject.to_string(),
        ))
    };
    let disk = cfg.threshold(Rule::DiskFull, cfg.disk_percent) as f32;
    for fs in &hb.host.filesystems {
        let holds = if is_firing(Rule::DiskFull, &fs.mount_point) {
            fs.used_percent > disk - hysteresis
        } else {
            fs.used_percent > disk
        };
        if holds {
            out.push(Condition::new(
                cfg,
                Some(&agent.id),
                Rule::DiskFull,
                fs.mount_point.clone(),
                format!(
                    "filesystem {} on {} is {:.0} % full (threshold {disk:.0} %)",
                    fs.mount_point, agent.name, fs.used_percent
                ),
                None,
            ));
        }
    }
    let memory = cfg.threshold(Rule::MemoryHigh, cfg.memory_percent) as f32;
    let used = hb.host.memory_used_percent();
    let over = if is_firing(Rule::MemoryHigh, "memory") {
        used > memory - hysteresis
    } else {
        used > memory
    };
    if hb.host.memory_total_bytes > 0 && over {
        out.push(Condition::new(
            cfg,
            Some(&agent.id),
            Rule::MemoryHigh,
            "memory",
            format!(
                "memory use on {} is {used:.0} % (threshold {memory:.0} %)",
                agent.name
            ),
            None,
        ));
    }
    out
}

// === containers ===

/// A stop or restart the relay was asked for: the container's death around then was wanted.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestedStop {
    pub agent_id: String,
    /// As the command named it (name or id).
    pub container: String,
    pub from: DateTime<Utc>,
    /// When the delivery ended (None: still running).
    pub until: Option<DateTime<Utc>>,
}

/// A requested stop's window: from, until (None: still running).
type StopWindow = (DateTime<Utc>, Option<DateTime<Utc>>);

/// The requested stops indexed by (agent, container as the command named it), so a death is
/// matched against that container's stops only.
#[derive(Clone, Debug, Default)]
pub struct StopIndex {
    by_container: HashMap<(String, String), Vec<StopWindow>>,
}

impl StopIndex {
    pub fn new(stops: impl IntoIterator<Item = RequestedStop>) -> StopIndex {
        let mut by_container: HashMap<_, Vec<_>> = HashMap::new();
        for s in stops {
            by_container
                .entry((s.agent_id, s.container))
                .or_default()
                .push((s.from, s.until));
        }
        StopIndex { by_container }
    }

    /// Whether the death `e` of a container of `agent` fell within a requested stop's window
    /// (the stop named the container by name, id, or an id prefix of at least 12 characters).
    fn wanted(&self, agent: &str, e: &AgentEvent, now: DateTime<Utc>) -> bool {
        if self.by_container.is_empty() {
            return false;
        }
        let slack = Duration::seconds(STOP_SLACK_SECS);
        let mut names: Vec<&str> = Vec::new();
        names.extend(e.container_name.as_deref());
        if let Some(id) = e.container_id.as_deref() {
            // The id and its prefixes from 12 characters (a short id) on.
            names.extend(
                id.char_indices()
                    .map(|(i, _)| i)
                    .skip(12)
                    .map(|i| &id[..i])
                    .chain(std::iter::once(id)),
            );
        }
        let mut key = (agent.to_string(), String::new());
        names.into_iter().any(|n| {
            key.1.clear();
            key.1.push_str(n);
            self.by_container.get(&key).is_some_and(|windows| {
                windows.iter().any(|(from, until)| {
                    e.at >= *from - slack && e.at <= until.unwrap_or(now) + slack
                })
            })
        })
    }
}

/// Slack around a requested stop's window (agent and relay clocks, Docker's event latency).
const STOP_SLACK_SECS: i64 = 30;
/// Exit code of a process ended by SIGTERM: somebody stopped it on purpose (`docker stop`,
/// `container.stop`, a host shutdown), not a crash.
const SIGTERM_EXIT: i64 = 143;
/// A running container that has been up this long is no longer in a restart loop.
const STABLE_RUNNING_SECS: i64 = 60;

/// Whether an event belongs to a container named or id'd in the set.
fn about(set: &HashSet<String>, e: &AgentEvent) -> bool {
    e.container_name.as_ref().is_some_and(|n| set.contains(n))
        || e.container_id.as_ref().is_some_and(|i| set.contains(i))
}

/// Container conditions of one agent from its latest heartbeat and recent events (oldest
/// first): `container_unhealthy`, `container_restart_loop`, `container_died`, `container_oom`
/// (subject: container name). Containers an update acts on (`updating`: names and ids) are
/// skipped, and events raised during an update (attribute `updating`) are ignored. A death or
/// OOM kill holds for `event_hold_secs` after its latest event AND until a heartbeat received
/// after it shows the container running (not restarting), or no longer shows it at all; a
/// repeated event within the hold keeps the same alert. Deaths by SIGTERM and deaths during a
/// stop or restart the relay was asked for are wanted, not alerts.
pub fn container_conditions(
    cfg: &AlertsConfig,
    agent: &AgentView,
    events: &[AgentEvent],
    stops: &StopIndex,
    updating: &HashSet<String>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    if agent.revoked {
        return out;
    }
    let hb = agent.heartbeat.as_ref().map(|(hb, _)| hb.as_ref());
    let skip = |name: &str, id: &str| updating.contains(name) || updating.contains(id);
    let mut seen: HashSet<(Rule, String)> = HashSet::new();
    let mut push = |out: &mut Vec<Condition>, rule: Rule, name: &str, message: String, since| {
        if seen.insert((rule, name.to_string())) {
            out.push(Condition::new(
                cfg,
                Some(&agent.id),
                rule,
                name,
                message,
                since,
            ));
        }
    };
    if let Some(hb) = hb {
        for c in &hb.docker.containers {
            if skip(&c.name, &c.id) {
                continue;
            }
            if c.health.as_deref() == Some("unhealthy") {
                push(
                    &mut out,
                    Rule::ContainerUnhealthy,
                    &c.name,
                    format!("container {} on {} is unhealthy", c.name, agent.name),
                    None,
                );
            }
            if c.state == "restarting" {
                push(
                    &mut out,
                    Rule::ContainerRestartLoop,
                    &c.name,
                    format!(
                        "container {} on {} keeps restarting ({} restarts)",
                        c.name, agent.name, c.restart_count
                    ),
                    None,
                );
            }
        }
    }
    // The latest relevant event per (rule, container): later evidence supersedes older.
    let mut latest: BTreeMap<(Rule, String), &AgentEvent> = BTreeMap::new();
    let restart_window = Duration::seconds(cfg.restart_loop_window_secs as i64);
    for e in events {
        if e.attributes.contains_key("updating") || about(updating, e) {
            continue;
        }
        let Some(name) = e.container_name.clone() else {
            continue;
        };
        let rule = match e.kind {
            EventKind::ContainerDied => {
                let code = e
                    .attributes
                    .get("exit_code")
                    .and_then(|c| c.trim().parse::<i64>().ok());
                // Only a crash exit code needs the requested-stop lookup.
                let crash = code.is_some_and(|c| c != 0 && c != SIGTERM_EXIT);
                match crash && !stops.wanted(&agent.id, e, now) {
                    true => Rule::ContainerDied,
                    // A clean or wanted exit supersedes an older death of the container.
                    _ => {
                        latest.remove(&(Rule::ContainerDied, name));
                        continue;
                    }
                }
            }
            EventKind::ContainerOom => Rule::ContainerOom,
            EventKind::ContainerRestartLoop if now - e.at <= restart_window => {
                Rule::ContainerRestartLoop
            }
            _ => continue,
        };
        latest.insert((rule, name), e);
    }
    // A death reported together with an OOM kill is the OOM alert's.
    let ooms: Vec<(String, DateTime<Utc>)> = latest
        .iter()
        .filter(|((r, _), _)| *r == Rule::ContainerOom)
        .map(|((_, n), e)| (n.clone(), e.at))
        .collect();
    for ((rule, name), e) in latest {
        if rule == Rule::ContainerDied
            && ooms
                .iter()
                .any(|(n, at)| *n == name && (e.at - *at).num_seconds().abs() <= 10)
        {
            continue;
        }
        let held = matches!(rule, Rule::ContainerDied | Rule::ContainerOom)
            && now - e.at < Duration::seconds(cfg.event_hold_secs.min(i64::MAX as u64) as i64);
        if !held && recovered_after(hb, rule, &name, e.at) {
            continue;
        }
        push(
            &mut out,
            rule,
            &name,
            format!("{} (on {})", e.message, agent.name),
            Some(e.at),
        );
    }
    out
}

/// Whether a heartbeat taken after `at` shows the container recovered: gone, or running and
/// not restarting (for a restart loop: up for a minute, or healthy).
fn recovered_after(hb: Option<&Heartbeat>, rule: Rule, name: &str, at: DateTime<Utc>) -> bool {
    let Some(hb) = hb.filter(|hb| hb.at > at) else {
        return false;
    };
    let Some(c) = hb.docker.containers.iter().find(|c| c.name == name) else {
        // Only a complete snapshot proves the container is gone.
        return hb.docker.error.is_none() && hb.docker.containers_omitted == 0;
    };
    if c.state != "running" {
        return false;
    }
    if rule != Rule::ContainerRestartLoop {
        return true;
    }
    let up_since = c
        .started_at
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    c.health.as_deref() == Some("healthy")
        || up_since.is_some_and(|t| hb.at - t >= Duration::seconds(STABLE_RUNNING_SECS))
}

// === backups ===

/// `backup_failed` per database whose latest backup failed, `backup_stale` per database
/// without a success for 48 h (subject: the backup key), and one `backups_all_failed` per agent
/// (subject `backups`) when all its databases failed or are stale. When the list was
/// `truncated`, its last agent may be missing databases, so it gets no `backups_all_failed`.
pub fn backup_conditions(
    cfg: &AlertsConfig,
    databases: &[DatabaseBackupState],
    truncated: bool,
) -> Vec<Condition> {
    let cut = databases
        .last()
        .filter(|_| truncated)
        .map(|d| d.agent_id.as_str());
    let mut out = Vec::new();
    let mut per_agent: BTreeMap<&str, Vec<DatabaseState>> = BTreeMap::new();
    for d in databases {
        per_agent.entry(&d.agent_id).or_default().push(d.state);
        let (rule, what) = match d.state {
            DatabaseState::Ok => continue,
            DatabaseState::Failed => (Rule::BackupFailed, "failed"),
            DatabaseState::Stale => (Rule::BackupStale, "has no successful backup for 48 h"),
        };
        let mut message = format!("backup {} on {} {what}", d.key, d.agent_name);
        if let Some(err) = d.latest.error.as_deref().filter(|e| !e.is_empty()) {
            message.push_str(&format!(": {err}"));
        }
        out.push(Condition::new(
            cfg,
            Some(&d.agent_id),
            rule,
            d.key.clone(),
            message,
            Some(d.latest.finished_at),
        ));
    }
    for (agent_id, states) in per_agent {
        if Some(agent_id) == cut {
            continue;
        }
        let alert = agent_alert(&states);
        if alert.level == BackupAlertLevel::Hard {
            out.push(Condition::new(
                cfg,
                Some(agent_id),
                Rule::BackupsAllFailed,
                "backups",
                alert.reason,
                None,
            ));
        }
    }
    out
}

// === updates ===

/// A finished update, as the update rules need it.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedUpdate {
    pub agent_id: String,
    /// The container's name as reported (else as asked for).
    pub container: String,
    pub command_id: String,
    pub outcome: Option<UpdateOutcome>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
}

/// The latest finished update of each (agent, container) within `update_alert_hours`: rolled
/// back → `update_rolled_back`, rollback failed → `rollback_failed` (subject: container).
/// A later update of the container that succeeds clears it; so does the end of the window.
pub fn update_conditions(
    cfg: &AlertsConfig,
    finished: &[FinishedUpdate],
    updating: &HashMap<String, HashSet<String>>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let window = Duration::hours(i64::from(cfg.update_alert_hours));
    let mut latest: BTreeMap<(&str, &str), &FinishedUpdate> = BTreeMap::new();
    for u in finished.iter().filter(|u| now - u.finished_at <= window) {
        let slot = latest.entry((&u.agent_id, &u.container)).or_insert(u);
        if u.finished_at > slot.finished_at {
            *slot = u;
        }
    }
    latest
        .into_values()
        .filter(|u| {
            !updating
                .get(&u.agent_id)
                .is_some_and(|s| s.contains(&u.container))
        })
        .filter_map(|u| {
            let (rule, what) = match u.outcome? {
                UpdateOutcome::RolledBack => (Rule::UpdateRolledBack, "was rolled back"),
                UpdateOutcome::RollbackFailed => {
                    (Rule::RollbackFailed, "failed and so did its rollback")
                }
                _ => return None,
            };
            let mut message = format!(
                "update {} of container {} {what}",
                u.command_id, u.container
            );
            if let Some(e) = u.error.as_deref().filter(|e| !e.is_empty()) {
                message.push_str(&format!(": {e}"));
            }
            Some(Condition::new(
                cfg,
                Some(&u.agent_id),
                rule,
                u.container.clone(),
                message,
                Some(u.finished_at),
            ))
        })
        .collect()
}

// === rollouts ===

/// A rollout as the rollout rules need it.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutView {
    pub id: String,
    /// `paused`, `aborted`, or any other state (ignored).
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// `rollout_paused` while a rollout is paused; `rollout_aborted` for `update_alert_hours` after
/// an abort (agent: none; subject: the rollout id).
pub fn rollout_conditions(
    cfg: &AlertsConfig,
    rollouts: &[RolloutView],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let window = Duration::hours(i64::from(cfg.update_alert_hours));
    rollouts
        .iter()
        .filter_map(|r| {
            let rule = match r.state.as_str() {
                "paused" => Rule::RolloutPaused,
                "aborted" if now - r.updated_at <= window => Rule::RolloutAborted,
                _ => return None,
            };
            let mut message = format!("rollout {} is {}", r.id, r.state);
            if let Some(reason) = r.reason.as_deref().filter(|s| !s.is_empty()) {
                message.push_str(&format!(": {reason}"));
            }
            Some(Condition::new(
                cfg,
                None,
                rule,
                r.id.clone(),
                message,
                Some(r.updated_at),
            ))
        })
        .collect()
}

// === agent_version_skew ===

/// Orders versions by their numeric dot/dash-separated parts (`1.10.0` > `1.9.3`), falling
/// back to text for non-numeric parts.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<String> {
        s.trim_start_matches('v')
            .split(['.', '-', '+'])
            .map(str::to_string)
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    // `1.2.0-rc1` is older than `1.2.0`.
    match (pa.len().cmp(&pb.len()), pa.len() > 3 || pb.len() > 3) {
        (std::cmp::Ordering::Equal, _) => std::cmp::Ordering::Equal,
        (o, true) => o.reverse(),
        (o, false) => o,
    }
}

/// Agents (not revoked) whose version differs from the newest among connected agents.
pub fn version_skew(cfg: &AlertsConfig, agents: &[AgentView]) -> Vec<Condition> {
    let newest = agents
        .iter()
        .filter(|a| a.connected && !a.revoked)
        .map(AgentView::version)
        .filter(|v| !v.is_empty())
        .max_by(|a, b| compare_versions(a, b));
    let Some(newest) = newest else {
        return Vec::new();
    };
    agents
        .iter()
        .filter(|a| !a.revoked)
        .filter(|a| !a.version().is_empty() && a.version() != newest)
        .map(|a| {
            Condition::new(
                cfg,
                Some(&a.id),
                Rule::AgentVersionSkew,
                "agent_version",
                format!(
                    "agent {} runs version {}; the fleet's newest is {newest}",
                    a.name,
                    a.version()
                ),
                None,
            )
        })
        .collect()
}

// === agent_upgrade_reverted ===

/// `agent_upgrade_reverted` (subject `<version>/<arch>`): an agent's updater reverted its
/// upgrade to a build, so the relay marked that build broken (by the agent). It holds for
/// `update_alert_hours` after the mark, or until an operator clears the mark.
pub fn upgrade_reverted_conditions(
    cfg: &AlertsConfig,
    releases: &[flotilla_shared::release::ReleaseInfo],
    agents: &[AgentView],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let window = Duration::hours(i64::from(cfg.update_alert_hours));
    let ids: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    releases
        .iter()
        .filter_map(|r| {
            let b = r.broken.as_ref()?;
            // Marked by an agent's reverted upgrade, not by an operator.
            if !ids.contains(b.by.as_str()) || now - b.at > window {
                return None;
            }
            Some(Condition::new(
                cfg,
                Some(&b.by),
                Rule::AgentUpgradeReverted,
                format!("{}/{}", r.version, r.arch),
                format!(
                    "the upgrade to flotilla-agent {} ({}) was reverted by the agent's updater; \
                     the build is marked broken and not sent again: {}",
                    r.version, r.arch, b.reason
                ),
                Some(b.at),
            ))
        })
        .collect()
}

/// `agent_upgrade_reverted` for rollbacks (`agent.upgrade` with `rollback`) the agent's updater
/// reverted within `update_alert_hours`: the older build is not marked broken for that (it is
/// the last known-good one), so the alert comes from the failed delivery itself. Subject
/// `<version>/<arch>` of the build the rollback went to.
pub fn rollback_reverted_conditions(
    cfg: &AlertsConfig,
    reverted: &[RevertedRollback],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let window = Duration::hours(i64::from(cfg.update_alert_hours));
    reverted
        .iter()
        .filter(|r| now - r.at <= window)
        .map(|r| {
            Condition::new(
                cfg,
                Some(&r.agent_id),
                Rule::AgentUpgradeReverted,
                format!("{}/{}", r.version, r.arch),
                format!(
                    "the rollback to flotilla-agent {} ({}) was reverted by the agent's updater; \
                     the agent still runs the version it had (the older build is not marked \
                     broken): {}",
                    r.version, r.arch, r.reason
                ),
                Some(r.at),
            )
        })
        .collect()
}

// === tls_expiry ===

/// The latest check of one TLS endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsCheck {
    pub endpoint: String,
    pub checked_at: DateTime<Utc>,
    /// The leaf certificate's notAfter, or why it could not be read.
    pub result: Result<DateTime<Utc>, String>,
}

/// Endpoints whose certificate expires in fewer than `tls_warn_days`, or that could not be
/// checked (agent: none; subject: the endpoint).
pub fn tls_conditions(
    cfg: &AlertsConfig,
    checks: &[TlsCheck],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let days = cfg.threshold(Rule::TlsExpiry, cfg.tls_warn_days);
    checks
        .iter()
        .filter_map(|c| {
            let message = match &c.result {
                Err(e) => format!("cannot check the TLS certificate of {}: {e}", c.endpoint),
                Ok(not_after) if *not_after <= now => format!(
                    "the TLS certificate of {} expired at {}",
                    c.endpoint,
                    not_after.format("%Y-%m-%d %H:%M UTC")
                ),
                Ok(not_after) if *not_after - now < Duration::days(i64::from(days)) => format!(
                    "the TLS certificate of {} expires in {} (at {})",
                    c.endpoint,
                    human(*not_after - now),
                    not_after.format("%Y-%m-%d %H:%M UTC")
                ),
                Ok(_) => return None,
            };
            Some(Condition::new(
                cfg,
                None,
                Rule::TlsExpiry,
                c.endpoint.clone(),
                message,
                None,
            ))
        })
        .collect()
}

/// A rollback (`agent.upgrade` with `rollback`) the agent's updater reverted: the older build
/// is not marked broken for it, but the `agent_upgrade_reverted` alert names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevertedRollback {
    pub agent_id: String,
    pub version: String,
    pub arch: String,
    /// The agent's error message.
    pub reason: String,
    pub at: DateTime<Utc>,
}

// issue 17 part 6: container memory near its limit, auto-heal restarts
mod upkeep;
pub use upkeep::{autoheal_conditions, container_memory_conditions};
// issue 17 §2: certificate_expiry, from the certificates agents read on their hosts.
mod certificates;
// issue 15 item 8
mod relaybackup;
pub use certificates::certificate_conditions;
pub use relaybackup::relay_backup_conditions;

#[cfg(test)]
mod tests;
