//! Alert tables and statements: `alerts` (one row per alert; at most one firing row per
//! (agent, rule, subject), enforced by a partial unique index) and `silences`. Decided
//! notifications go to the outbox (`sql/notifications.rs`) in the evaluation's transaction.

use super::super::StoreError;
use super::{from_json, parse_opt_ts, parse_ts, to_json, ts, Sql};
use super::{params, Conn, ConnExt, Optional, Row, SqlResult};
use crate::model::alerts::outbox::{NewNotification, Notification};
use crate::model::alerts::rules::{Condition, FinishedUpdate, RequestedStop};
use crate::model::alerts::{AlertChange, AlertPolicy, AlertQuery, Applied, NotificationKind};
use chrono::{DateTime, Utc};
use flotilla_shared::alert::{AlertInfo, AlertState, Severity, Silence};
use flotilla_shared::command::Command;
use flotilla_shared::heartbeat::AgentEvent;
use flotilla_shared::ids::new_id;
use flotilla_shared::selector::Labels;
use flotilla_shared::update::UpdateOutcome;
use std::collections::{HashMap, HashSet};

/// Migration 6: alerts and silences. `agent_id` is '' for alerts about no agent, so the
/// deduplication key never holds a NULL. The indexes on `events(kind, received_at)` and
/// `commands(kind, created_at)` serve the evaluation's container-event and requested-stop
/// queries, which otherwise scan those tables every evaluation.
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    agent_name TEXT,
    agent_labels TEXT NOT NULL,
    started_at TEXT NOT NULL,
    fired_at TEXT NOT NULL,
    resolved_at TEXT,
    last_seen_at TEXT NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at TEXT,
    silence_id TEXT,
    notified_at TEXT
);
CREATE UNIQUE INDEX alerts_firing_key ON alerts(agent_id, rule, subject) WHERE state = 'firing';
CREATE INDEX alerts_fired_at ON alerts(fired_at);
CREATE INDEX alerts_resolved_at ON alerts(resolved_at);
CREATE TABLE silences (
    id TEXT PRIMARY KEY,
    selector TEXT NOT NULL,
    rule TEXT,
    subject TEXT,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    comment TEXT NOT NULL
);
CREATE INDEX silences_ends_at ON silences(ends_at);
CREATE INDEX events_kind_received_at ON events(kind, received_at);
CREATE INDEX commands_kind_created_at ON commands(kind, created_at);
"#;

/// Migration 11: the newest firing alerts and their counts by severity without a sort or a
/// table scan (the fleet overview, `GET /api/v1/alerts?state=firing`).
pub(in crate::store) const FIRING_INDEXES: &str = r#"
CREATE INDEX alerts_firing_newest ON alerts(fired_at, id) WHERE state = 'firing';
CREATE INDEX alerts_firing_severity ON alerts(severity) WHERE state = 'firing';
"#;

const ALERT_COLUMNS: &str = "id, agent_id, rule, subject, severity, message, state, agent_name, \
     agent_labels, started_at, fired_at, resolved_at, last_seen_at, acknowledged_by, \
     acknowledged_at, silence_id, notified_at, notify_decided_at";

struct AlertRow {
    id: String,
    agent_id: String,
    rule: String,
    subject: String,
    severity: String,
    message: String,
    state: String,
    agent_name: Option<String>,
    agent_labels: String,
    started_at: String,
    fired_at: String,
    resolved_at: Option<String>,
    last_seen_at: String,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<String>,
    silence_id: Option<String>,
    notified_at: Option<String>,
    /// When the firing notification was decided (written to the outbox).
    notify_decided_at: Option<String>,
}

impl AlertRow {
    fn read(r: &Row) -> SqlResult<AlertRow> {
        Ok(AlertRow {
            id: r.get(0)?,
            agent_id: r.get(1)?,
            rule: r.get(2)?,
            subject: r.get(3)?,
            severity: r.get(4)?,
            message: r.get(5)?,
            state: r.get(6)?,
            agent_name: r.get(7)?,
            agent_labels: r.get(8)?,
            started_at: r.get(9)?,
            fired_at: r.get(10)?,
            resolved_at: r.get(11)?,
            last_seen_at: r.get(12)?,
            acknowledged_by: r.get(13)?,
            acknowledged_at: r.get(14)?,
            silence_id: r.get(15)?,
            notified_at: r.get(16)?,
            notify_decided_at: r.get(17)?,
        })
    }

    fn into_info(self) -> Result<AlertInfo, StoreError> {
        let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("bad alert {what} {v:?}"));
        Ok(AlertInfo {
            severity: self
                .severity
                .parse::<Severity>()
                .map_err(|_| corrupt("severity", &self.severity))?,
            state: self
                .state
                .parse::<AlertState>()
                .map_err(|_| corrupt("state", &self.state))?,
            agent_id: Some(self.agent_id).filter(|a| !a.is_empty()),
            agent_labels: from_json("alert labels", &self.agent_labels)?,
            started_at: parse_ts(&self.started_at)?,
            fired_at: parse_ts(&self.fired_at)?,
            resolved_at: parse_opt_ts(self.resolved_at)?,
            last_seen_at: parse_ts(&self.last_seen_at)?,
            acknowledged_at: parse_opt_ts(self.acknowledged_at)?,
            notified_at: parse_opt_ts(self.notified_at)?,
            silenced: self.silence_id.is_some(),
            silence_id: self.silence_id,
            id: self.id,
            rule: self.rule,
            subject: self.subject,
            message: self.message,
            agent_name: self.agent_name,
            acknowledged_by: self.acknowledged_by,
        })
    }
}

const SILENCE_COLUMNS: &str =
    "id, selector, rule, subject, starts_at, ends_at, created_by, created_at, comment";

fn read_silence(r: &Row) -> SqlResult<[Option<String>; 9]> {
    Ok([
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ])
}

fn silence_from(row: [Option<String>; 9]) -> Result<Silence, StoreError> {
    let [id, selector, rule, subject, starts_at, ends_at, created_by, created_at, comment] = row;
    let req = |v: Option<String>| v.unwrap_or_default();
    let selector = req(selector);
    Ok(Silence {
        selector: selector
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("bad silence selector {selector:?}")))?,
        starts_at: parse_ts(&req(starts_at))?,
        ends_at: parse_ts(&req(ends_at))?,
        created_at: parse_ts(&req(created_at))?,
        id: req(id),
        rule,
        subject,
        created_by: req(created_by),
        comment: req(comment),
    })
}

fn active_silences(tx: &mut dyn Conn, now: DateTime<Utc>) -> Result<Vec<Silence>, StoreError> {
    let now = ts(now);
    let mut stmt = tx.prepare(&format!(
        "SELECT {SILENCE_COLUMNS} FROM silences WHERE starts_at <= ?1 AND ends_at > ?1 \
         ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([now], read_silence)?;
    rows.into_iter().map(silence_from).collect()
}

/// Whether an alert of this severity, whose condition started at `started_at`, is due for its
/// firing notification.
pub(in crate::store) fn due(
    severity: Severity,
    started_at: DateTime<Utc>,
    p: &AlertPolicy,
) -> bool {
    match severity {
        Severity::Soft => false,
        Severity::Medium => p.now - started_at >= p.medium_after,
        Severity::Hard => true,
    }
}

/// Writes the outbox rows of one decided notification (one per channel that takes it). A
/// firing alert with nothing left to deliver (no channel takes it, or every row was given up
/// for a full queue) is notified now.
fn queue_notification(
    tx: &mut dyn Conn,
    kind: NotificationKind,
    info: &mut AlertInfo,
    p: &AlertPolicy,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    let n = Notification::of(kind, info, format!("{}{}", p.outbox.url_prefix, info.id));
    let event = n.event_name();
    let payload = to_json(&n);
    let rows: Vec<NewNotification> = p
        .outbox
        .routes
        .iter()
        .filter(|r| r.takes(event, Some(n.severity)))
        .map(|r| NewNotification {
            delivery_id: n.delivery_id(),
            channel: r.name.clone(),
            event: event.to_string(),
            alert_id: Some(n.alert_id.clone()),
            payload: payload.clone(),
        })
        .collect();
    let (queued, dropped) = Sql::insert_notifications(tx, &rows, p.outbox.capacity, p.now)?;
    applied.queued += queued;
    applied.dropped += dropped;
    if kind == NotificationKind::Firing {
        let now = ts(p.now);
        Sql::mark_alert_notified(tx, &info.id, &now)?;
        if queued == dropped {
            info.notified_at = Some(p.now);
        }
    }
    Ok(())
}

/// A stop command's container and creation time.
type StopTarget = (String, DateTime<Utc>);

impl Sql {
    /// One evaluation: diffs the conditions that hold now with the firing alerts, in one
    /// transaction (insert new, refresh still present, resolve absent), updates which silence
    /// covers each firing alert, and decides the notifications (recording `notify_decided_at`
    /// and writing their outbox rows in the same transaction, so a restart never decides twice
    /// and never loses a decision).
    ///
    /// Rules in `p.held` (their source is not ready yet) keep their firing alerts exactly as
    /// they are, and their new conditions wait. A still-firing alert is written only when
    /// something about it changed (message, severity, agent name or labels, silence, or its
    /// notification), so a quiet evaluation of a large fleet writes nothing.
    pub(in crate::store) fn apply_conditions(
        tx: &mut dyn Conn,
        conditions: &[Condition],
        p: &AlertPolicy,
    ) -> Result<Applied, StoreError> {
        let now = ts(p.now);
        let held: HashSet<&str> = p.held.iter().map(|r| r.as_str()).collect();
        let silences = active_silences(tx, p.now)?;
        let firing: Vec<AlertRow> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'firing'"
            ))?;

            stmt.query_map(params![], AlertRow::read)?
        };
        let mut by_key: HashMap<(String, String, String), AlertRow> = firing
            .into_iter()
            .map(|r| ((r.agent_id.clone(), r.rule.clone(), r.subject.clone()), r))
            .collect();
        let mut applied = Applied::default();
        let mut done = HashSet::new();
        for c in conditions {
            let (agent_id, rule, subject) = c.key();
            let key = (agent_id.clone(), rule.to_string(), subject.clone());
            if !done.insert(key.clone()) {
                continue;
            }
            let existing = by_key.remove(&key);
            if existing.is_none() && held.contains(rule) {
                // A new firing of a rule whose source is not ready waits for readiness.
                continue;
            }
            let silence = silences
                .iter()
                .find(|s| s.matches(rule, &subject, &c.agent_labels))
                .map(|s| s.id.clone());
            let labels = to_json(&c.agent_labels);
            applied.firing[severity_index(c.severity)] += 1;
            match existing {
                Some(row) => {
                    let name = c.agent_name.clone().or_else(|| row.agent_name.clone());
                    let notify = row.notify_decided_at.is_none()
                        && row.acknowledged_at.is_none()
                        && silence.is_none()
                        && due(c.severity, parse_ts(&row.started_at)?, p);
                    let changed = row.message != c.message
                        || row.severity != c.severity.as_str()
                        || row.agent_name != name
                        || row.agent_labels != labels
                        || row.silence_id != silence;
                    if !changed && !notify {
                        continue;
                    }
                    tx.execute(
                        "UPDATE alerts SET last_seen_at = ?2, message = ?3, severity = ?4, \
                         agent_name = ?5, agent_labels = ?6, silence_id = ?7, \
                         notify_decided_at = COALESCE(notify_decided_at, ?8) WHERE id = ?1",
                        params![
                            row.id,
                            now,
                            c.message,
                            c.severity.as_str(),
                            name,
                            labels,
                            silence,
                            notify.then(|| now.clone())
                        ],
                    )?;
                    if notify {
                        let mut info = AlertRow {
                            last_seen_at: now.clone(),
                            message: c.message.clone(),
                            severity: c.severity.as_str().to_string(),
                            agent_name: name,
                            agent_labels: labels,
                            silence_id: silence,
                            notify_decided_at: Some(now.clone()),
                            ..row
                        }
                        .into_info()?;
                        queue_notification(
                            tx,
                            NotificationKind::Firing,
                            &mut info,
                            p,
                            &mut applied,
                        )?;
                        applied.notify.push((NotificationKind::Firing, info));
                    }
                }
                None => {
                    let id = new_id("alr");
                    let started = c.since.map(|s| s.min(p.now)).unwrap_or(p.now);
                    let notify = silence.is_none() && due(c.severity, started, p);
                    tx.execute(
                        "INSERT INTO alerts (id, agent_id, rule, subject, severity, message, \
                         state, agent_name, agent_labels, started_at, fired_at, last_seen_at, \
                         silence_id, notify_decided_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'firing', ?7, \
                         ?8, ?9, ?10, ?10, ?11, ?12)",
                        params![
                            id,
                            agent_id,
                            rule,
                            subject,
                            c.severity.as_str(),
                            c.message,
                            c.agent_name,
                            labels,
                            ts(started),
                            now,
                            silence,
                            notify.then(|| now.clone())
                        ],
                    )?;
                    applied.fired += 1;
                    applied.changes.push(AlertChange {
                        kind: NotificationKind::Firing,
                        id: id.clone(),
                        agent_id: Some(agent_id.clone()).filter(|a| !a.is_empty()),
                        rule: rule.to_string(),
                        subject: subject.clone(),
                        severity: c.severity.as_str().to_string(),
                        message: c.message.clone(),
                    });
                    if notify {
                        let mut info = AlertInfo {
                            id,
                            agent_id: Some(agent_id).filter(|a| !a.is_empty()),
                            rule: rule.to_string(),
                            subject,
                            severity: c.severity,
                            message: c.message.clone(),
                            state: AlertState::Firing,
                            agent_name: c.agent_name.clone(),
                            agent_labels: c.agent_labels.clone(),
                            started_at: started,
                            fired_at: p.now,
                            resolved_at: None,
                            last_seen_at: p.now,
                            acknowledged_by: None,
                            acknowledged_at: None,
                            silenced: false,
                            silence_id: None,
                            notified_at: None,
                        };
                        queue_notification(
                            tx,
                            NotificationKind::Firing,
                            &mut info,
                            p,
                            &mut applied,
                        )?;
                        applied.notify.push((NotificationKind::Firing, info));
                    }
                }
            }
        }
        for (_, row) in by_key {
            if held.contains(row.rule.as_str()) {
                // Its source is not ready: neither resolved nor refreshed.
                let severity = row.severity.parse::<Severity>().map_err(|_| {
                    StoreError::Corrupt(format!("bad alert severity {:?}", row.severity))
                })?;
                applied.firing[severity_index(severity)] += 1;
                continue;
            }
            // A silence covering the alert now also covers its resolution.
            let labels: Labels = from_json("alert labels", &row.agent_labels)?;
            let silence = silences
                .iter()
                .find(|s| s.matches(&row.rule, &row.subject, &labels))
                .map(|s| s.id.clone());
            tx.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = ?2, \
                 silence_id = COALESCE(?3, silence_id) WHERE id = ?1",
                params![row.id, now, silence],
            )?;
            applied.resolved += 1;
            applied.changes.push(AlertChange {
                kind: NotificationKind::Resolved,
                id: row.id.clone(),
                agent_id: Some(row.agent_id.clone()).filter(|a| !a.is_empty()),
                rule: row.rule.clone(),
                subject: row.subject.clone(),
                severity: row.severity.clone(),
                message: row.message.clone(),
            });
            let notify = row.notify_decided_at.is_some() && silence.is_none();
            if notify {
                let mut info = AlertInfo {
                    state: AlertState::Resolved,
                    resolved_at: Some(p.now),
                    ..row.into_info()?
                };
                queue_notification(tx, NotificationKind::Resolved, &mut info, p, &mut applied)?;
                applied.notify.push((NotificationKind::Resolved, info));
            }
        }
        Ok(applied)
    }

    /// Keys of the firing alerts of these rules.
    pub(in crate::store) fn firing_alert_keys(
        tx: &mut dyn Conn,
        rules: &[&str],
    ) -> Result<HashSet<(String, String, String)>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT agent_id, rule, subject FROM alerts WHERE state = 'firing' AND rule = ?1",
        )?;
        let mut out = HashSet::new();
        for rule in rules {
            let rows = stmt.query_map([rule], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            for row in rows {
                out.insert(row);
            }
        }
        Ok(out)
    }

    pub(in crate::store) fn alerts(
        tx: &mut dyn Conn,
        q: &AlertQuery,
    ) -> Result<Vec<AlertInfo>, StoreError> {
        // The state and severity as literals (closed enums), so a `state = 'firing'` list
        // walks the partial index of firing alerts newest first instead of sorting every
        // alert (migration 11).
        let mut filter =
            String::from("(?2 IS NULL OR agent_id = ?2) AND (?3 IS NULL OR rule = ?3)");
        if let Some(state) = q.state {
            filter.push_str(&format!(" AND state = '{}'", state.as_str()));
        }
        if let Some(severity) = q.severity {
            filter.push_str(&format!(" AND severity = '{}'", severity.as_str()));
        }
        // Firing first when both states are listed; within a state, newest first.
        let order = if q.state.is_some() {
            "fired_at DESC, id DESC"
        } else {
            "state = 'firing' DESC, fired_at DESC, id DESC"
        };
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE {filter} ORDER BY {order} LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![q.limit, q.agent_id, q.rule], AlertRow::read)?;
        rows.into_iter().map(AlertRow::into_info).collect()
    }

    pub(in crate::store) fn alert(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<Option<AlertInfo>, StoreError> {
        alert_by_id(tx, id)
    }

    /// Records who acknowledged the alert (the first acknowledgement stays).
    pub(in crate::store) fn ack_alert(
        tx: &mut dyn Conn,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertInfo>, StoreError> {
        tx.execute(
            "UPDATE alerts SET acknowledged_by = ?2, acknowledged_at = ?3 \
             WHERE id = ?1 AND acknowledged_at IS NULL",
            params![id, by, ts(now)],
        )?;
        let info = alert_by_id(tx, id)?;
        Ok(info)
    }

    pub(in crate::store) fn create_silence(
        tx: &mut dyn Conn,
        s: &Silence,
    ) -> Result<(), StoreError> {
        tx.execute(
            &format!(
                "INSERT INTO silences ({SILENCE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                s.id,
                s.selector.to_string(),
                s.rule,
                s.subject,
                ts(s.starts_at),
                ts(s.ends_at),
                s.created_by,
                ts(s.created_at),
                s.comment
            ],
        )?;
        Ok(())
    }

    /// Silences that have not ended (active or starting later), by start.
    pub(in crate::store) fn silences(
        tx: &mut dyn Conn,
        now: DateTime<Utc>,
    ) -> Result<Vec<Silence>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT {SILENCE_COLUMNS} FROM silences WHERE ends_at > ?1 ORDER BY starts_at, id"
        ))?;
        let rows = stmt.query_map([ts(now)], read_silence)?;
        rows.into_iter().map(silence_from).collect()
    }

    /// Ends a silence now (kept for the alerts that name it). False when no such silence has
    /// yet to end.
    pub(in crate::store) fn end_silence(
        tx: &mut dyn Conn,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE silences SET ends_at = ?2, starts_at = {} WHERE id = ?1 AND ends_at > ?2",
            tx.dialect().least("starts_at", "?2")
        );
        let n = tx.execute(&sql, params![id, ts(now)])?;
        Ok(n > 0)
    }

    /// Deletes resolved alerts and ended silences older than `cutoff`.
    pub(in crate::store) fn prune_alerts(
        tx: &mut dyn Conn,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let cutoff = ts(cutoff);
        let n = tx.execute(
            "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?1",
            [&cutoff],
        )?;
        tx.execute("DELETE FROM silences WHERE ends_at < ?1", [&cutoff])?;
        Ok(n)
    }

    /// Container died / OOM / restart-loop events received since `since`, oldest first, and
    /// how many rows could not be read (skipped: one bad row must not stop all alerting).
    pub(in crate::store) fn container_events(
        tx: &mut dyn Conn,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(String, AgentEvent)>, usize), StoreError> {
        let mut stmt = tx.prepare(
            "SELECT agent_id, event FROM events WHERE received_at >= ?1 \
             AND kind IN ('container.died', 'container.oom', 'container.restart_loop', \
             'container.autoheal') \
             ORDER BY id",
        )?;
        let rows = stmt.query_map([ts(since)], |r| {
            Ok((r.get::<String>(0)?, r.get::<String>(1)?))
        })?;
        let mut skipped = 0;
        let mut out = Vec::with_capacity(rows.len());
        for (agent, event) in rows {
            match serde_json::from_str::<AgentEvent>(&event) {
                Ok(e) => out.push((agent, e)),
                Err(_) => skipped += 1,
            }
        }
        Ok((out, skipped))
    }

    /// `container.stop` / `container.restart` deliveries made since `since`, and how many
    /// rows could not be read (skipped). Each command's JSON is parsed once, however many
    /// agents it went to.
    pub(in crate::store) fn requested_stops(
        tx: &mut dyn Conn,
        since: DateTime<Utc>,
    ) -> Result<(Vec<RequestedStop>, usize), StoreError> {
        let mut stmt = tx.prepare(
            "SELECT c.id, d.agent_id, c.command, c.created_at, d.state, d.updated_at \
             FROM commands c JOIN deliveries d ON d.command_id = c.id \
             WHERE c.kind IN ('container.stop', 'container.restart') AND c.created_at >= ?1 \
             ORDER BY c.id",
        )?;
        let rows = stmt.query_map([ts(since)], |r| Ok(r.clone()))?;
        let mut out = Vec::new();
        let mut skipped = 0;
        // The command being read: its id and (container, created_at), or None if unreadable.
        let mut current: Option<(String, Option<StopTarget>)> = None;
        for r in &rows {
            let command_id: String = r.get(0)?;
            if current.as_ref().is_none_or(|(id, _)| *id != command_id) {
                let command: String = r.get(2)?;
                let created_at: String = r.get(3)?;
                let parsed = match (
                    serde_json::from_str::<Command>(&command),
                    parse_ts(&created_at),
                ) {
                    (Ok(Command::ContainerStop(a) | Command::ContainerRestart(a)), Ok(at)) => {
                        Some((a.container, at))
                    }
                    _ => {
                        skipped += 1;
                        None
                    }
                };
                current = Some((command_id, parsed));
            }
            let Some((_, Some((container, from)))) = &current else {
                continue;
            };
            let agent_id: String = r.get(1)?;
            let state: String = r.get(4)?;
            let updated_at: String = r.get(5)?;
            let finished = !matches!(state.as_str(), "pending" | "queued" | "sent" | "received");
            let until = if finished {
                match parse_ts(&updated_at) {
                    Ok(t) => Some(t),
                    Err(_) => {
                        skipped += 1;
                        continue;
                    }
                }
            } else {
                None
            };
            out.push(RequestedStop {
                agent_id,
                container: container.clone(),
                from: *from,
                until,
            });
        }
        Ok((out, skipped))
    }

    /// Updates finished since `since` (for the update rules).
    pub(in crate::store) fn finished_updates(
        tx: &mut dyn Conn,
        since: DateTime<Utc>,
    ) -> Result<Vec<FinishedUpdate>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT agent_id, COALESCE(container_name, container), command_id, outcome, \
             finished_at, error_message FROM updates WHERE finished_at >= ?1",
        )?;
        let rows = stmt.query_map([ts(since)], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<Option<String>>(3)?,
                r.get::<String>(4)?,
                r.get::<Option<String>>(5)?,
            ))
        })?;
        rows.into_iter()
            .map(
                |(agent_id, container, command_id, outcome, finished_at, error)| {
                    Ok(FinishedUpdate {
                        agent_id,
                        container,
                        command_id,
                        outcome: outcome.and_then(|o| {
                            serde_json::from_value::<UpdateOutcome>(serde_json::Value::String(o))
                                .ok()
                        }),
                        finished_at: parse_ts(&finished_at)?,
                        error,
                    })
                },
            )
            .collect()
    }
}

fn alert_by_id(tx: &mut dyn Conn, id: &str) -> Result<Option<AlertInfo>, StoreError> {
    tx.query_row(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
        [id],
        AlertRow::read,
    )
    .optional()?
    .map(AlertRow::into_info)
    .transpose()
}

fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Soft => 0,
        Severity::Medium => 1,
        Severity::Hard => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::SqliteConn;
    use flotilla_shared::command::ContainerStopArgs;
    use flotilla_shared::heartbeat::EventKind;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn event(name: &str) -> String {
        serde_json::to_string(&AgentEvent {
            kind: EventKind::ContainerDied,
            at: at(0),
            container_id: None,
            container_name: Some(name.into()),
            message: format!("{name} died"),
            attributes: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn unreadable_rows_are_skipped_and_counted() {
        let db = crate::store::sqlite::test_connection();
        db.pragma_update(None, "foreign_keys", "OFF").unwrap();
        let tx = &mut SqliteConn::new(&db);
        for (seq, body) in [
            (1, event("web")),
            (2, "{not json".to_string()),
            (3, event("db")),
        ] {
            tx.execute(
                "INSERT INTO events (agent_id, seq, received_at, kind, event) \
                     VALUES ('a', ?1, ?2, 'container.died', ?3)",
                params![seq, ts(at(seq)), body],
            )
            .unwrap();
        }
        let (events, skipped) = Sql::container_events(tx, at(0)).unwrap();
        assert_eq!(skipped, 1);
        let names: Vec<_> = events
            .iter()
            .map(|(_, e)| e.container_name.clone().unwrap())
            .collect();
        assert_eq!(names, ["web", "db"]);

        let stop = serde_json::to_string(&Command::ContainerStop(
            serde_json::from_value::<ContainerStopArgs>(serde_json::json!({"container": "web"}))
                .unwrap(),
        ))
        .unwrap();
        for (id, body) in [("cmd_1", stop.as_str()), ("cmd_2", "garbage")] {
            tx.execute(
                "INSERT INTO commands (id, kind, command, envelope, signature, audience, \
                     created_at, expires_at, created_by) VALUES (?1, 'container.stop', ?2, '', \
                     '', '', ?3, ?3, 'test')",
                params![id, body, ts(at(1))],
            )
            .unwrap();
            for (agent, state) in [("a", "succeeded"), ("b", "sent")] {
                tx.execute(
                    "INSERT INTO deliveries (command_id, agent_id, position, state, \
                         updated_at) VALUES (?1, ?2, 0, ?3, ?4)",
                    params![id, agent, state, ts(at(5))],
                )
                .unwrap();
            }
        }
        let (mut stops, skipped) = Sql::requested_stops(tx, at(0)).unwrap();
        assert_eq!(
            skipped, 1,
            "one bad command, counted once for its two deliveries"
        );
        stops.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        assert_eq!(
            stops,
            [
                RequestedStop {
                    agent_id: "a".into(),
                    container: "web".into(),
                    from: at(1),
                    until: Some(at(5)),
                },
                RequestedStop {
                    agent_id: "b".into(),
                    container: "web".into(),
                    from: at(1),
                    until: None,
                },
            ]
        );
    }

    /// The evaluation's queries on `events` and `commands` use an index, not a table scan.
    #[test]
    fn evaluation_queries_use_indexes() {
        let db = crate::store::sqlite::test_connection();
        let mut tx = SqliteConn::new(&db);
        let mut plan = |sql: &str| -> String {
            let rows = tx
                .query_map(&format!("EXPLAIN QUERY PLAN {sql}"), [ts(at(0))], |r| {
                    r.get::<String>(3)
                })
                .unwrap();
            rows.join("; ")
        };
        let events = plan(
            "SELECT agent_id, event FROM events WHERE received_at >= ?1 \
             AND kind IN ('container.died', 'container.oom', 'container.restart_loop', \
             'container.autoheal') \
             ORDER BY id",
        );
        assert!(events.contains("events_kind_received_at"), "{events}");
        let commands = plan(
            "SELECT c.id, d.agent_id FROM commands c JOIN deliveries d ON d.command_id = c.id \
             WHERE c.kind IN ('container.stop', 'container.restart') AND c.created_at >= ?1 \
             ORDER BY c.id",
        );
        assert!(commands.contains("commands_kind_created_at"), "{commands}");
    }
}
