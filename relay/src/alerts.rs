//! Alerts: rules evaluated over the fleet's state, their lifecycle, and notifications.
//!
//! # Design
//!
//! Every `alerts.evaluate_interval_secs` the engine builds the set of CONDITIONS that hold now
//! — {agent?, rule, subject, severity, message, since} — from small source functions in
//! [`rules`] (pure: the engine gathers their inputs from the store, the heartbeat cache, the
//! hub and the TLS checker's cache), and hands the set to
//! [`Store::apply_alert_conditions`](crate::store::Store::apply_alert_conditions), which diffs
//! it with the stored firing alerts in ONE transaction: a new key → a firing alert (new id
//! `alr_…`), a key still present → message/severity/silence refreshed (the row, and its
//! `last_seen_at`, is written only when one of those or its notification changed, so a quiet
//! evaluation of a large fleet writes nothing), a firing key absent → resolved. The key is (agent id or '', rule, subject); at most one firing row per key, and a
//! key that fires again after resolving is a new alert. History is kept (pruned by the
//! retention sweep after `retention_days`).
//!
//! Silences (selector on agent labels, optional rule and subject, a time window) are matched
//! in the same transaction: a silenced alert is recorded (`silenced`, `silence_id`) but never
//! notified, and neither is a resolution while a silence covers the alert. An acknowledged
//! alert stays firing but is not notified again.
//!
//! # Restarts
//!
//! Some sources know nothing right after the relay starts: nobody is connected yet (so
//! `agent_version_skew` has no newest version and `agent_unreachable` cannot tell a slow
//! reconnect from a dead agent) and the TLS cache is empty until its first round of checks.
//! While a rule's source is not ready ([`held_rules`]: uptime below `unreachable_after` for
//! those two, no completed TLS check for `tls_expiry`), its firing alerts are kept exactly as
//! they are (not resolved, not fired again with a new id and a second notification) and its
//! new firings wait for readiness.
//!
//! # Flapping
//!
//! A container died/OOM alert holds at least `event_hold_secs` after its latest event and
//! until the container is seen running, so one that its restart policy brings back at once
//! still lives long enough to be notified; repeated events within the hold refresh the same
//! alert. `disk_full` / `memory_high` resolve only `hysteresis_percent` below their threshold.
//!
//! One unreadable event or command row is skipped (counted, warned about once per evaluation);
//! it never stops all alerting.
//!
//! Notification decisions happen in that transaction too, so a restart never decides twice:
//! soft never; medium once the condition is `medium_notify_after_secs` old; hard at once;
//! never while silenced or acknowledged. The decision (`notify_decided_at`) and one outbox row
//! per channel that takes it are written with the firing or resolution, and a resolution is
//! notified only for alerts whose firing was. The delivery engine ([`notify`]) sends the rows
//! after the commit, retrying across restarts; `notified_at` is written once the firing
//! notification was delivered (or given up) everywhere. After the commit the engine kicks the
//! notifier, which never blocks. A channel that gives a notification up raises the hard
//! `notification_failed` alert (subject: the channel's name) until it delivers again.
//!
//! Containers an update acts on are skipped (`Store::active_updates`, one call per
//! evaluation) and events raised during an update (attribute `updating`) are ignored. TLS
//! endpoints are checked on their own task ([`tls`]), so a slow endpoint never delays an
//! evaluation; the engine reads the cached results.

pub mod notify;
pub mod tls;

pub use crate::model::alerts::rules;
pub use crate::model::alerts::{
    AlertChange, AlertPolicy, AlertQuery, AlertsConfig, Applied, NotificationKind,
};

use crate::config::RelayConfig;
use crate::heartbeats::HeartbeatCache;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::stream::EventBus;
use chrono::{DateTime, Utc};
use flotilla_shared::stream::EventKind;
use rules::{AgentView, Condition, Rule};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most backup databases one evaluation looks at.
const MAX_BACKUP_ROWS: u32 = 100_000;

/// How long an agent may be silent and disconnected before it is unreachable:
/// `heartbeat_interval_secs` × `alerts.unreachable_intervals` (or the rule's threshold).
pub fn unreachable_after(config: &RelayConfig) -> Duration {
    let intervals = config
        .alerts
        .threshold(Rule::AgentUnreachable, config.alerts.unreachable_intervals);
    Duration::from_secs(
        config
            .heartbeat_interval_secs
            .saturating_mul(u64::from(intervals)),
    )
}

/// The engine's parts the API shares (a field of the app state): the TLS results, the
/// evaluate-now kick and the relay's start time.
pub struct AlertsHandle {
    /// Latest TLS endpoint checks.
    pub tls: Arc<tls::TlsResults>,
    /// Wakes the engine for an evaluation now (after an ack or a silence).
    pub kick: tokio::sync::Notify,
    /// When this relay started (nobody can have been heard from before).
    pub started_at: DateTime<Utc>,
    /// Whether the truncated-backups warning was logged already (once per run).
    backups_truncated_warned: AtomicBool,
}

impl Default for AlertsHandle {
    fn default() -> Self {
        AlertsHandle {
            tls: Arc::default(),
            kick: tokio::sync::Notify::new(),
            started_at: Utc::now(),
            backups_truncated_warned: AtomicBool::new(false),
        }
    }
}

/// Rules whose source is not ready yet after a relay start, so their firing alerts must be
/// kept as they are (neither resolved nor fired again) and their new firings wait:
/// `agent_unreachable` and `agent_version_skew` until the relay has been up for
/// `unreachable_after` (agents need that long to reconnect or be counted unreachable),
/// `tls_expiry` until the first round of TLS checks has completed (`tls_ready`).
pub fn held_rules(uptime: Duration, unreachable_after: Duration, tls_ready: bool) -> Vec<Rule> {
    let mut held = Vec::new();
    if uptime < unreachable_after {
        held.extend([Rule::AgentUnreachable, Rule::AgentVersionSkew]);
    }
    if !tls_ready {
        held.push(Rule::TlsExpiry);
    }
    held
}

/// `<alerts.public_url or http://<listen>>/api/v1/alerts/<id>`.
pub fn alert_url(config: &RelayConfig, id: &str) -> String {
    let base = config.alerts.public_url.trim().trim_end_matches('/');
    if base.is_empty() {
        format!("http://{}/api/v1/alerts/{id}", config.listen)
    } else {
        format!("{base}/api/v1/alerts/{id}")
    }
}

/// The alerts engine: exactly what an evaluation reads and where its decisions go.
#[derive(Clone)]
pub struct AlertsEngine {
    store: Store,
    hub: Arc<Hub>,
    heartbeats: Arc<HeartbeatCache>,
    metrics: Arc<Metrics>,
    handle: Arc<AlertsHandle>,
    cfg: AlertsConfig,
    /// [`unreachable_after`], computed once.
    unreachable_after: Duration,
    /// [`alert_url`] without the id.
    url_prefix: String,
    /// The channels decided notifications are written for, and the delivery engine to kick.
    notifier: notify::Notifier,
    /// `[backup] enabled`: the relay's own backups are expected (the `relay_backup` rule).
    relay_backups_enabled: bool,
}

impl AlertsEngine {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        heartbeats: Arc<HeartbeatCache>,
        metrics: Arc<Metrics>,
        handle: Arc<AlertsHandle>,
        config: &RelayConfig,
        notifier: notify::Notifier,
    ) -> AlertsEngine {
        AlertsEngine {
            store,
            hub,
            heartbeats,
            metrics,
            handle,
            cfg: config.alerts.clone(),
            unreachable_after: unreachable_after(config),
            url_prefix: alert_url(config, ""),
            notifier,
            relay_backups_enabled: config.backup.enabled,
        }
    }

    /// One evaluation at `now` (see [`evaluate`]).
    pub async fn step(&self, now: DateTime<Utc>) -> Result<Applied, StoreError> {
        evaluate(self, now).await
    }

    /// Runs the TLS checker and the evaluation loop until shutdown. The loop is the shell of
    /// [`AlertsEngine::step`]: it publishes each evaluation's [`Applied::changes`] on `stream`
    /// (the engine itself never holds the bus).
    pub async fn run(self, stream: Arc<EventBus>, shutdown: CancellationToken) {
        if !self.cfg.enabled {
            return;
        }
        let checker = tokio::spawn(tls::run_checker(
            self.cfg.tls_endpoints.clone(),
            Duration::from_secs(self.cfg.tls_check_interval_secs),
            Duration::from_secs(self.cfg.tls_timeout_secs),
            self.handle.tls.clone(),
            shutdown.clone(),
        ));
        let mut tick = tokio::time::interval(self.cfg.evaluate_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.handle.kick.notified() => {}
            }
            match self.step(crate::store::now()).await {
                Ok(applied) => {
                    publish_changes(&stream, &applied.changes);
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "alert evaluation failed; retrying at the next one");
                    }
                    failing = true;
                }
            }
        }
        let _ = checker.await;
    }
}

/// One `alert.firing` / `alert.resolved` per alert that fired or resolved (subject: the alert
/// id; agent: the alert's, when it names one).
pub fn publish_changes(stream: &EventBus, changes: &[AlertChange]) {
    for c in changes {
        let (kind, verb) = match c.kind {
            NotificationKind::Firing => (EventKind::AlertFiring, "firing"),
            NotificationKind::Resolved => (EventKind::AlertResolved, "resolved"),
        };
        stream.publish(
            kind,
            c.agent_id.as_deref(),
            Some(&c.id),
            format!("{} alert {} {verb}: {}", c.severity, c.rule, c.message),
            Some(serde_json::json!({
                "rule": c.rule,
                "severity": c.severity,
                "subject": c.subject,
            })),
        );
    }
}

/// Builds every condition that holds now.
pub async fn conditions(
    engine: &AlertsEngine,
    now: DateTime<Utc>,
) -> Result<Vec<Condition>, StoreError> {
    let cfg = &engine.cfg;
    let records = engine.store.agents().await?;
    let agents: Vec<AgentView> = records
        .into_iter()
        .map(|r| AgentView {
            connected: engine.hub.is_connected(&r.id),
            heartbeat: engine.heartbeats.latest(&r.id),
            revoked: r.revoked_at.is_some(),
            id: r.id,
            name: r.name,
            labels: r.labels,
            enrolled_at: r.enrolled_at,
            last_heartbeat_at: r.last_heartbeat_at,
            agent_version: r.agent_version,
        })
        .collect();
    let mut out = Vec::new();
    let started_at = engine.handle.started_at;
    out.extend(rules::agent_unreachable(
        cfg,
        &agents,
        engine.unreachable_after,
        started_at,
        now,
    ));
    let firing = if cfg.hysteresis_percent > 0
        && (cfg.enabled(Rule::DiskFull) || cfg.enabled(Rule::MemoryHigh))
    {
        engine
            .store
            .firing_alert_keys(vec![Rule::DiskFull.as_str(), Rule::MemoryHigh.as_str()])
            .await?
    } else {
        rules::FiringKeys::new()
    };
    for a in &agents {
        out.extend(rules::host_conditions(cfg, a, &firing));
        // issue 17 part 6
        out.extend(rules::container_memory_conditions(cfg, a, now));
        // --- compose (issue 17, part 1) ---
        out.extend(crate::model::alerts::compose::drift_conditions(cfg, a));
    }

    // Containers an update acts on, per agent (names and ids, as asked and as reported).
    let mut updating: HashMap<String, HashSet<String>> = HashMap::new();
    for u in engine.store.active_updates().await? {
        let set = updating.entry(u.agent_id.clone()).or_default();
        set.insert(u.container.clone());
        if let Some(n) = u.container_name {
            set.insert(n);
        }
    }
    let container_rules = [
        Rule::ContainerAutohealed,
        Rule::ContainerDied,
        Rule::ContainerOom,
        Rule::ContainerRestartLoop,
        Rule::ContainerUnhealthy,
    ];
    if container_rules.iter().any(|r| cfg.enabled(*r)) {
        let since = now - chrono::Duration::hours(i64::from(cfg.container_event_hours));
        let mut events: HashMap<String, Vec<_>> = HashMap::new();
        let (rows, bad_events) = engine.store.container_alert_events(since).await?;
        for (agent_id, e) in rows {
            events.entry(agent_id).or_default().push(e);
        }
        let (stops, bad_stops) = engine.store.requested_stops(since).await?;
        if bad_events + bad_stops > 0 {
            tracing::warn!(
                events = bad_events,
                commands = bad_stops,
                "alert evaluation skipped unreadable event/command rows"
            );
        }
        let stops = rules::StopIndex::new(stops);
        let none = HashSet::new();
        for a in &agents {
            let mut evs = events.remove(&a.id).unwrap_or_default();
            evs.sort_by_key(|e| e.at);
            out.extend(rules::container_conditions(
                cfg,
                a,
                &evs,
                &stops,
                updating.get(&a.id).unwrap_or(&none),
                now,
            ));
            // issue 17 part 6
            out.extend(rules::autoheal_conditions(cfg, a, &evs, now));
        }
    }
    if [
        Rule::BackupFailed,
        Rule::BackupStale,
        Rule::BackupsAllFailed,
    ]
    .iter()
    .any(|r| cfg.enabled(*r))
    {
        let backups = engine
            .store
            .fleet_backups(None, MAX_BACKUP_ROWS, now)
            .await?;
        if backups.truncated
            && !engine
                .handle
                .backups_truncated_warned
                .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                limit = MAX_BACKUP_ROWS,
                "more backup databases than the alerts engine looks at; the rest are not \
                 checked for backup alerts"
            );
        }
        out.extend(rules::backup_conditions(
            cfg,
            &backups.databases,
            backups.truncated,
        ));
    }
    if engine.relay_backups_enabled && cfg.enabled(Rule::RelayBackup) {
        let health = engine.store.relay_backup_health().await?;
        out.extend(rules::relay_backup_conditions(
            cfg,
            &health,
            engine.handle.started_at,
            now,
        ));
    }
    if cfg.enabled(Rule::UpdateRolledBack) || cfg.enabled(Rule::RollbackFailed) {
        let since = now - chrono::Duration::hours(i64::from(cfg.update_alert_hours));
        let finished = engine.store.finished_updates(since).await?;
        out.extend(rules::update_conditions(cfg, &finished, &updating, now));
    }
    out.extend(rules::rollout_conditions(
        cfg,
        &rollout_views(engine).await?,
        now,
    ));
    out.extend(rules::version_skew(cfg, &agents));
    if cfg.enabled(Rule::AgentUpgradeReverted) {
        let releases: Vec<_> = engine
            .store
            .releases()
            .await?
            .into_iter()
            .filter(|r| r.info.broken.is_some())
            .map(|r| r.info)
            .collect();
        out.extend(rules::upgrade_reverted_conditions(
            cfg, &releases, &agents, now,
        ));
        // Reverted rollbacks mark nothing broken; their failed deliveries raise the alert.
        let since = now - chrono::Duration::hours(i64::from(cfg.update_alert_hours));
        let rollbacks = engine.store.reverted_rollbacks(since).await?;
        out.extend(rules::rollback_reverted_conditions(cfg, &rollbacks, now));
    }
    if cfg.enabled(Rule::NotificationFailed) {
        let failures = engine.store.notification_failures().await?;
        out.extend(
            crate::model::alerts::outbox::notification_failed_conditions(
                cfg,
                &failures,
                &engine.notifier.routes(),
            ),
        );
    }
    out.extend(rules::tls_conditions(
        cfg,
        &engine.handle.tls.snapshot(),
        now,
    ));
    // issue 17 §2: certificates read by the agents on their hosts.
    if cfg.enabled(Rule::CertificateExpiry) {
        for a in &agents {
            out.extend(rules::certificate_conditions(cfg, a, now));
        }
    }

    // Disabled rules go; agent conditions get the agent's name and labels.
    let by_id: HashMap<&str, &AgentView> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
    out.retain(|c| cfg.enabled(c.rule));
    for c in &mut out {
        if let Some(a) = c.agent_id.as_deref().and_then(|id| by_id.get(id)) {
            c.agent_name = Some(a.name.clone());
            c.agent_labels = a.labels.clone();
        }
    }
    Ok(out)
}

/// The rollouts the rollout rules look at: every paused one and the newest aborted ones (the
/// rule keeps those aborted within `update_alert_hours`).
async fn rollout_views(engine: &AlertsEngine) -> Result<Vec<rules::RolloutView>, StoreError> {
    use flotilla_shared::rollout::RolloutState;
    let cfg = &engine.cfg;
    if !cfg.enabled(Rule::RolloutPaused) && !cfg.enabled(Rule::RolloutAborted) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for wanted in [RolloutState::Paused, RolloutState::Aborted] {
        let filter = crate::model::rollouts::RolloutFilter {
            state: Some(wanted),
            active_only: false,
            limit: 1000,
        };
        for r in engine.store.rollouts(filter).await? {
            out.push(rules::RolloutView {
                state: r.state.as_str().to_string(),
                updated_at: r.finished_at.unwrap_or(r.updated_at),
                id: r.id,
                reason: r.reason,
            });
        }
    }
    Ok(out)
}

/// One evaluation: conditions → store (one transaction) → notifications → gauge.
pub async fn evaluate(engine: &AlertsEngine, now: DateTime<Utc>) -> Result<Applied, StoreError> {
    let conditions = conditions(engine, now).await?;
    let uptime = (now - engine.handle.started_at)
        .to_std()
        .unwrap_or_default();
    let tls_ready = engine.cfg.tls_endpoints.is_empty() || engine.handle.tls.ready();
    let policy = AlertPolicy {
        outbox: crate::model::alerts::outbox::OutboxPolicy {
            routes: engine.notifier.routes(),
            url_prefix: engine.url_prefix.clone(),
            capacity: engine.notifier.capacity(),
        },
        held: held_rules(uptime, engine.unreachable_after, tls_ready),
        now,
        medium_after: chrono::Duration::seconds(
            engine.cfg.medium_notify_after_secs.min(i64::MAX as u64) as i64,
        ),
    };
    let applied = engine
        .store
        .apply_alert_conditions(conditions, policy)
        .await?;
    if applied.queued > 0 {
        engine.notifier.count_dropped(applied.dropped, "(alerts)");
        engine.notifier.kick();
    }
    engine.metrics.set_alerts_firing(applied.firing);
    if applied.fired > 0 || applied.resolved > 0 {
        tracing::info!(
            fired = applied.fired,
            resolved = applied.resolved,
            notified = applied.notify.len(),
            queued = applied.queued,
            "alerts changed"
        );
    }
    Ok(applied)
}

#[cfg(test)]
mod tests;
