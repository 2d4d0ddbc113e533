//! The notification outbox's statements (`store/notifications.rs` is their facade): one row
//! per (delivery id, channel), inserted in the transaction that decides the notification,
//! claimed for one attempt at a time, finished as delivered or failed.
//!
//! A claim moves `next_attempt_at` forward by the claim's length and counts the attempt, in
//! one write transaction (SQLite's single writer; PostgreSQL's SERIALIZABLE, retried on a
//! conflict), so two claimers never get the same row, and a claimer that dies mid-attempt
//! leaves a row that is due again when its claim runs out. Finishing an attempt names its
//! number: an attempt whose claim expired and was taken again cannot finish the newer one.

use super::*;
use crate::model::alerts::outbox::{
    AttemptOutcome, ChannelFailures, Claimed, DeliveryState, NewNotification, NotificationQuery,
};
use flotilla_shared::alert::NotificationDelivery;
use std::collections::HashMap;

/// The outbox and the alerts' `notify_decided_at`: when the evaluation decided the firing
/// notification (`notified_at` is now written once it was delivered or given up everywhere).
/// Alerts decided before this migration were recorded as notified then: both columns agree.
pub const SCHEMA: &str = r#"
CREATE TABLE notifications (
    delivery_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    alert_id TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    finished_at TEXT,
    last_error TEXT,
    PRIMARY KEY (delivery_id, channel)
);
CREATE INDEX notifications_due ON notifications(channel, next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_alert ON notifications(alert_id, event);
CREATE INDEX notifications_finished ON notifications(channel, state, finished_at);
CREATE INDEX notifications_created ON notifications(created_at);
ALTER TABLE alerts ADD COLUMN notify_decided_at TEXT;
UPDATE alerts SET notify_decided_at = notified_at;
"#;

/// The error recorded for a notification refused because its channel's queue was full.
pub const QUEUE_FULL: &str =
    "the channel already holds notify.queue_capacity undelivered notifications";

const PENDING: &str = DeliveryState::Pending.as_str();
const DELIVERED: &str = DeliveryState::Delivered.as_str();
const FAILED: &str = DeliveryState::Failed.as_str();

const COLUMNS: &str = "delivery_id, channel, event, alert_id, state, attempts, created_at, \
     next_attempt_at, finished_at, last_error";

impl Sql {
    /// Inserts decided notifications (a row already there for the same delivery id and
    /// channel is kept as it is: deciding twice delivers once). A channel already holding
    /// `capacity` pending rows gets the new one as failed at once ([`QUEUE_FULL`]). Returns
    /// (rows inserted, of which failed for a full queue).
    pub(in crate::store) fn insert_notifications(
        tx: &mut dyn Conn,
        rows: &[NewNotification],
        capacity: usize,
        now: DateTime<Utc>,
    ) -> Result<(usize, usize), StoreError> {
        let now = ts(now);
        let mut pending: HashMap<&str, usize> = HashMap::new();
        let (mut inserted, mut dropped) = (0, 0);
        for row in rows {
            let held = match pending.get(row.channel.as_str()) {
                Some(n) => *n,
                None => {
                    let n: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM notifications WHERE channel = ?1 AND state = ?2",
                        params![row.channel, PENDING],
                        |r| r.get(0),
                    )?;
                    n.max(0) as usize
                }
            };
            let full = held >= capacity;
            let (state, finished_at, error) = if full {
                (FAILED, Some(now.clone()), Some(QUEUE_FULL))
            } else {
                (PENDING, None, None)
            };
            let n = tx.execute(
                "INSERT OR IGNORE INTO notifications (delivery_id, channel, event, alert_id, \
                 payload, state, attempts, created_at, next_attempt_at, finished_at, last_error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?8, ?9)",
                params![
                    row.delivery_id,
                    row.channel,
                    row.event,
                    row.alert_id,
                    row.payload,
                    state,
                    now,
                    finished_at,
                    error
                ],
            )?;
            inserted += n;
            if n == 1 && full {
                dropped += 1;
            }
            pending.insert(row.channel.as_str(), held + usize::from(n == 1 && !full));
        }
        Ok((inserted, dropped))
    }

    /// Claims up to `limit` of `channel`'s due notifications for one attempt each, until
    /// `claim_until`.
    pub(in crate::store) fn claim_notifications(
        tx: &mut dyn Conn,
        channel: &str,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = ts(now);
        let due = {
            let mut stmt = tx.prepare(
                "SELECT delivery_id, channel, event, alert_id, payload, attempts, created_at \
                 FROM notifications WHERE channel = ?1 AND state = ?2 AND next_attempt_at <= ?3 \
                 ORDER BY next_attempt_at, created_at, delivery_id LIMIT ?4",
            )?;
            stmt.query_map(params![channel, PENDING, now, limit as i64], |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<Option<String>>(3)?,
                    r.get::<String>(4)?,
                    r.get::<i64>(5)?,
                    r.get::<String>(6)?,
                ))
            })?
        };
        let until = ts(claim_until);
        let mut out = Vec::with_capacity(due.len());
        for (delivery_id, channel, event, alert_id, payload, attempts, created_at) in due {
            let n = tx.execute(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?5 \
                 WHERE delivery_id = ?1 AND channel = ?2 AND state = ?3 AND attempts = ?4",
                params![delivery_id, channel, PENDING, attempts, until],
            )?;
            if n == 1 {
                out.push(Claimed {
                    created_at: parse_ts(&created_at)?,
                    attempt: u32::try_from(attempts + 1).unwrap_or(u32::MAX),
                    delivery_id,
                    channel,
                    event,
                    alert_id,
                    payload,
                });
            }
        }
        Ok(out)
    }

    /// Records how attempt `attempt` of a claimed notification ended; false when that attempt
    /// no longer owns the row (its claim ran out and it was claimed again, or it finished).
    /// The last firing notification of an alert to finish sets the alert's `notified_at`.
    pub(in crate::store) fn finish_notification(
        tx: &mut dyn Conn,
        claimed: &Claimed,
        outcome: &AttemptOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let now = ts(now);
        let guard = "WHERE delivery_id = ?1 AND channel = ?2 AND state = ?3 AND attempts = ?4";
        let key = (
            &claimed.delivery_id,
            &claimed.channel,
            PENDING,
            i64::from(claimed.attempt),
        );
        let n = match outcome {
            AttemptOutcome::Delivered => tx.execute(
                &format!("UPDATE notifications SET state = ?5, finished_at = ?6 {guard}"),
                params![key.0, key.1, key.2, key.3, DELIVERED, now],
            )?,
            AttemptOutcome::Retry { at, error } => tx.execute(
                &format!("UPDATE notifications SET next_attempt_at = ?5, last_error = ?6 {guard}"),
                params![key.0, key.1, key.2, key.3, ts(*at), error],
            )?,
            AttemptOutcome::Failed { error } => tx.execute(
                &format!(
                    "UPDATE notifications SET state = ?5, finished_at = ?6, last_error = ?7 \
                     {guard}"
                ),
                params![key.0, key.1, key.2, key.3, FAILED, now, error],
            )?,
        };
        let finished = !matches!(outcome, AttemptOutcome::Retry { .. });
        if n == 1 && finished && claimed.event == "alert.firing" {
            if let Some(alert_id) = &claimed.alert_id {
                Sql::mark_alert_notified(tx, alert_id, &now)?;
            }
        }
        Ok(n == 1)
    }

    /// Sets an alert's `notified_at` once none of its firing notifications is pending.
    pub(in crate::store) fn mark_alert_notified(
        tx: &mut dyn Conn,
        alert_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE alerts SET notified_at = ?2 WHERE id = ?1 AND notified_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM notifications WHERE alert_id = ?1 \
             AND event = 'alert.firing' AND state = ?3)",
            params![alert_id, now, PENDING],
        )?;
        Ok(())
    }

    /// When `channel`'s next pending notification is due (None: nothing pending).
    pub(in crate::store) fn next_notification_due(
        tx: &mut dyn Conn,
        channel: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<String> = tx.query_row(
            "SELECT MIN(next_attempt_at) FROM notifications WHERE channel = ?1 AND state = ?2",
            params![channel, PENDING],
            |r| r.get(0),
        )?;
        parse_opt_ts(at)
    }

    /// Stored notifications, newest first.
    pub(in crate::store) fn notifications(
        tx: &mut dyn Conn,
        q: &NotificationQuery,
    ) -> Result<Vec<NotificationDelivery>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR alert_id = ?2) AND (?3 IS NULL OR channel = ?3) \
             ORDER BY created_at DESC, delivery_id, channel LIMIT ?4"
        );
        let mut stmt = tx.prepare(&sql)?;
        let rows = stmt.query_map(
            params![
                q.state.map(DeliveryState::as_str),
                q.alert_id,
                q.channel,
                i64::from(q.limit)
            ],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<Option<String>>(3)?,
                    r.get::<String>(4)?,
                    r.get::<i64>(5)?,
                    r.get::<String>(6)?,
                    r.get::<String>(7)?,
                    r.get::<Option<String>>(8)?,
                    r.get::<Option<String>>(9)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(
                |(
                    delivery_id,
                    channel,
                    event,
                    alert_id,
                    state,
                    attempts,
                    created,
                    next,
                    fin,
                    e,
                )| {
                    let state = state.parse::<DeliveryState>().map_err(|_| {
                        StoreError::Corrupt(format!("bad notification state {state:?}"))
                    })?;
                    Ok(NotificationDelivery {
                        next_attempt_at: if state == DeliveryState::Pending {
                            Some(parse_ts(&next)?)
                        } else {
                            None
                        },
                        created_at: parse_ts(&created)?,
                        finished_at: parse_opt_ts(fin)?,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        delivery_id,
                        channel,
                        event,
                        alert_id,
                        state,
                        last_error: e,
                    })
                },
            )
            .collect()
    }

    /// Channels whose newest finished notification was given up, with the count given up
    /// since their last delivery (the `notification_failed` rule's source).
    pub(in crate::store) fn notification_failures(
        tx: &mut dyn Conn,
    ) -> Result<Vec<ChannelFailures>, StoreError> {
        let delivered: HashMap<String, String> = {
            let mut stmt = tx.prepare(
                "SELECT channel, MAX(finished_at) FROM notifications WHERE state = ?1 \
                 GROUP BY channel",
            )?;
            stmt.query_map(params![DELIVERED], |r| {
                Ok((r.get::<String>(0)?, r.get::<String>(1)?))
            })?
            .into_iter()
            .collect()
        };
        let failed: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT channel, MAX(finished_at) FROM notifications WHERE state = ?1 \
                 GROUP BY channel ORDER BY channel",
            )?;
            stmt.query_map(params![FAILED], |r| {
                Ok((r.get::<String>(0)?, r.get::<String>(1)?))
            })?
        };
        let mut out = Vec::new();
        for (channel, latest_failed) in failed {
            // Text order is time order on both backends' text form.
            let since = delivered.get(&channel).cloned();
            if since.as_ref().is_some_and(|d| *d >= latest_failed) {
                continue;
            }
            let since = since.unwrap_or_else(|| ts(DateTime::<Utc>::UNIX_EPOCH));
            let (count, first): (i64, String) = tx.query_row(
                "SELECT COUNT(*), MIN(finished_at) FROM notifications \
                 WHERE channel = ?1 AND state = ?2 AND finished_at > ?3",
                params![channel, FAILED, since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (delivery_id, error): (String, Option<String>) = tx.query_row(
                "SELECT delivery_id, last_error FROM notifications WHERE channel = ?1 \
                 AND state = ?2 ORDER BY finished_at DESC, delivery_id LIMIT 1",
                params![channel, FAILED],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            out.push(ChannelFailures {
                channel,
                failed: count.max(0) as u64,
                first_failed_at: parse_ts(&first)?,
                latest_delivery_id: delivery_id,
                latest_error: error.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Deletes notifications finished before `cutoff`, and pending ones decided before it
    /// (a channel no longer configured leaves its rows pending).
    pub(in crate::store) fn prune_notifications(
        tx: &mut dyn Conn,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let cutoff = ts(cutoff);
        let finished = tx.execute(
            "DELETE FROM notifications WHERE state <> ?1 AND finished_at < ?2",
            params![PENDING, cutoff],
        )?;
        let stale = tx.execute(
            "DELETE FROM notifications WHERE state = ?1 AND created_at < ?2",
            params![PENDING, cutoff],
        )?;
        Ok(finished + stale)
    }
}
