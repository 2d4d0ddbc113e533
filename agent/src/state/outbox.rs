//! The outbox (`outbox`): results, events and backup reports not yet acknowledged by the relay,
//! in seq order; the cap on the events it holds (`outbox_dropped`: the one notice that counts
//! the events dropped) and the Docker events cursor (`events_cursor`), moved in the same
//! transaction as the events it covers.

use super::State;
use anyhow::Result;
use chrono::Utc;
use flotilla_shared::command::CommandResult;
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::atomic::Ordering;

/// Events kept in the outbox when nothing else is configured.
pub const DEFAULT_MAX_OUTBOX_EVENTS: usize = 10_000;

/// Where the Docker event follower stands: the engine time of the last event it stored, and
/// the events (`id/action`) seen at exactly that time. Resuming from `time_nano` (inclusive)
/// and skipping those keys loses nothing and repeats nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub time_nano: i64,
    pub keys: Vec<String>,
}

// === impl State ===

impl State {
    /// Appends items in one transaction; returns their seqs.
    pub async fn append_outbox(&self, items: Vec<OutboxItem>) -> Result<Vec<u64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.append_events_at(items, None).await
    }

    /// Appends container events and moves the events cursor past them, in one transaction:
    /// after a restart the follower resumes exactly behind what was stored.
    pub async fn append_events(
        &self,
        items: Vec<OutboxItem>,
        cursor: EventCursor,
    ) -> Result<Vec<u64>> {
        self.append_events_at(items, Some(cursor)).await
    }

    async fn append_events_at(
        &self,
        items: Vec<OutboxItem>,
        cursor: Option<EventCursor>,
    ) -> Result<Vec<u64>> {
        let notify = self.outbox_notify.clone();
        let max_events = self.max_outbox_events.load(Ordering::Relaxed);
        let seqs = self
            .call(move |c| {
                let tx = c.transaction()?;
                let mut seqs = Vec::with_capacity(items.len());
                for item in &items {
                    seqs.push(insert_outbox(&tx, item)?);
                }
                if items.iter().any(|i| matches!(i, OutboxItem::Event(_))) {
                    cap_events(&tx, max_events)?;
                }
                if let Some(cursor) = cursor {
                    tx.execute(
                        "INSERT INTO events_cursor (id, time_nano, keys) VALUES (1, ?1, ?2)
                         ON CONFLICT (id) DO UPDATE SET time_nano = excluded.time_nano,
                         keys = excluded.keys",
                        params![cursor.time_nano, serde_json::to_string(&cursor.keys)?],
                    )?;
                }
                tx.commit()?;
                Ok(seqs)
            })
            .await?;
        notify.notify_one();
        Ok(seqs)
    }

    /// The Docker events cursor stored by `append_events`, if any.
    pub async fn events_cursor(&self) -> Result<Option<EventCursor>> {
        self.call(|c| {
            let row: Option<(i64, String)> = c
                .query_row(
                    "SELECT time_nano, keys FROM events_cursor WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.map(|(time_nano, keys)| EventCursor {
                time_nano,
                keys: serde_json::from_str(&keys).unwrap_or_default(),
            }))
        })
        .await
    }

    /// Queues a stored result again (the relay re-sent a command that already ran), unless
    /// the outbox still holds an unacknowledged result for that command: that one will reach
    /// the relay, and every duplicate would otherwise add another copy. Returns whether it was
    /// queued.
    pub async fn requeue_result(&self, result: CommandResult) -> Result<bool> {
        let notify = self.outbox_notify.clone();
        let queued = self
            .call(move |c| {
                let tx = c.transaction()?;
                let pending: Option<i64> = tx
                    .query_row(
                        "SELECT seq FROM outbox WHERE command_id = ?1 AND is_event = 0 LIMIT 1",
                        params![result.command_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if pending.is_some() {
                    return Ok(false);
                }
                insert_outbox(&tx, &OutboxItem::Result(result))?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if queued {
            notify.notify_one();
        }
        Ok(queued)
    }

    /// Replaces the item at `seq` (one that can never be sent as it is) keeping its place in
    /// the queue; a replaced result also replaces the journaled one, so a re-sent duplicate
    /// gets the same answer.
    pub async fn replace_outbox_item(&self, seq: u64, item: OutboxItem) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE outbox SET item = ?2 WHERE seq = ?1",
                params![seq as i64, serde_json::to_string(&item)?],
            )?;
            if let OutboxItem::Result(r) = &item {
                tx.execute(
                    "UPDATE journal SET result = ?2 WHERE id = ?1 AND status = 'done'",
                    params![r.command_id, serde_json::to_string(r)?],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` unacknowledged items with seq greater than `after`, in seq order.
    pub async fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, OutboxItem)>> {
        self.call(move |c| {
            let mut stmt =
                c.prepare("SELECT seq, item FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (seq, text) in rows {
                match serde_json::from_str(&text) {
                    Ok(item) => out.push((seq as u64, item)),
                    // An item this build cannot read would block the queue forever; it can only
                    // come from a newer agent version sharing the state dir, so skip it.
                    Err(e) => tracing::warn!(seq, error = %e, "skipping unreadable outbox item"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes every item with seq at or below `seq` (the relay's acks are cumulative).
    pub async fn ack_outbox(&self, seq: u64) -> Result<usize> {
        self.call(
            move |c| Ok(c.execute("DELETE FROM outbox WHERE seq <= ?1", params![seq as i64])?),
        )
        .await
    }

    /// Number of unacknowledged outbox items.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.call(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }
}

/// Inserts one outbox row; returns its seq.
pub(super) fn insert_outbox(c: &Connection, item: &OutboxItem) -> Result<u64> {
    let (is_event, command_id) = match item {
        OutboxItem::Event(_) => (true, None),
        OutboxItem::Result(r) => (false, Some(r.command_id.as_str())),
        // Backup reports are never dropped by the event cap: they are the record of a run.
        OutboxItem::BackupReport(_) => (false, None),
    };
    c.execute(
        "INSERT INTO outbox (item, is_event, command_id) VALUES (?1, ?2, ?3)",
        params![serde_json::to_string(item)?, is_event, command_id],
    )?;
    Ok(c.last_insert_rowid() as u64)
}

/// Keeps at most `max` events in the outbox: beyond it the oldest are deleted and ONE notice
/// event (updated in place while it is still queued) says how many were dropped.
fn cap_events(c: &Connection, max: usize) -> Result<()> {
    let events: i64 = c.query_row("SELECT COUNT(*) FROM outbox WHERE is_event = 1", [], |r| {
        r.get(0)
    })?;
    let max = max.max(1) as i64;
    if events <= max {
        return Ok(());
    }
    let notice: Option<(i64, i64)> = c
        .query_row(
            "SELECT d.seq, d.count FROM outbox_dropped d JOIN outbox o ON o.seq = d.seq
             WHERE d.id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    // A new notice needs room for itself.
    let excess = events - max + i64::from(notice.is_none());
    let dropped = c.execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE is_event = 1
         AND seq != ?1 ORDER BY seq LIMIT ?2)",
        params![notice.map(|n| n.0).unwrap_or(-1), excess],
    )? as i64;
    let total = notice.map(|n| n.1).unwrap_or(0) + dropped;
    let item = serde_json::to_string(&OutboxItem::Event(dropped_notice(total as u64, max as u64)))?;
    match notice {
        Some((seq, _)) => {
            c.execute(
                "UPDATE outbox SET item = ?2 WHERE seq = ?1",
                params![seq, item],
            )?;
            c.execute(
                "UPDATE outbox_dropped SET count = ?1 WHERE id = 1",
                params![total],
            )?;
        }
        None => {
            c.execute(
                "INSERT INTO outbox (item, is_event) VALUES (?1, 1)",
                params![item],
            )?;
            c.execute(
                "INSERT INTO outbox_dropped (id, seq, count) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, count = excluded.count",
                params![c.last_insert_rowid(), total],
            )?;
        }
    }
    Ok(())
}

/// Attribute of the notice event that counts the events dropped from a full outbox.
pub const DROPPED_EVENTS_ATTRIBUTE: &str = "dropped_events";

/// The event that reports dropped events (`agent.events_dropped`, count in `dropped_events`).
pub fn dropped_notice(count: u64, max: u64) -> AgentEvent {
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert(DROPPED_EVENTS_ATTRIBUTE.to_string(), count.to_string());
    attributes.insert("max_outbox_events".to_string(), max.to_string());
    AgentEvent {
        kind: EventKind::AgentEventsDropped,
        at: Utc::now(),
        container_id: None,
        container_name: None,
        message: format!(
            "agent dropped its {count} oldest unsent events: the outbox holds at most {max} \
             events while the relay is unreachable"
        ),
        attributes,
    }
}
