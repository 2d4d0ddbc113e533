//! The command journal (`journal`): every command id the agent accepted, running or done with
//! its result (and the command itself, so one interrupted before it did anything can still be
//! reported in its kind's terms). It makes every command run at most once; finishing a command
//! journals the result and queues it in the outbox in one transaction.

use super::outbox::insert_outbox;
use super::{ts, State};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use flotilla_shared::command::CommandResult;
use flotilla_shared::protocol::OutboxItem;
use rusqlite::{params, Connection, OptionalExtension};

/// Journal entries are kept this long after their command expired: past expiry a replay is
/// refused as expired anyway, so the entry is no longer needed for deduplication.
const JOURNAL_KEEP_AFTER_EXPIRY_HOURS: i64 = 24;

/// Where a command stands in the journal.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalEntry {
    Running,
    Done(Box<CommandResult>),
}

/// What `journal_begin` found.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalBegin {
    /// First time this id is seen: it is now journaled as running.
    New,
    /// Already journaled.
    Existing(JournalEntry),
}

// === impl State ===

impl State {
    pub async fn journal_get(&self, command_id: &str) -> Result<Option<JournalEntry>> {
        let id = command_id.to_string();
        self.call(move |c| journal_get(c, &id)).await
    }

    /// Journals a command as running unless its id is already journaled (atomic: the lookup and
    /// the insert happen under one lock).
    pub async fn journal_begin(
        &self,
        command_id: &str,
        received_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<JournalBegin> {
        self.journal_begin_with(command_id, received_at, expires_at, None)
            .await
    }

    /// `journal_begin` that also keeps the command (JSON) with the entry.
    pub async fn journal_begin_with(
        &self,
        command_id: &str,
        received_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        command: Option<String>,
    ) -> Result<JournalBegin> {
        let id = command_id.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            if let Some(existing) = journal_get(&tx, &id)? {
                return Ok(JournalBegin::Existing(existing));
            }
            tx.execute(
                "INSERT INTO journal (id, received_at, expires_at, status, command)
                 VALUES (?1, ?2, ?3, 'running', ?4)",
                params![id, ts(received_at), ts(expires_at), command],
            )?;
            tx.commit()?;
            Ok(JournalBegin::New)
        })
        .await
    }

    /// Records a command's result in the journal and appends it to the outbox, in one
    /// transaction: either the relay will hear about the result or the command still shows as
    /// running. Returns the outbox seq.
    pub async fn finish_command(&self, result: CommandResult) -> Result<u64> {
        let notify = self.outbox_notify.clone();
        let seq = self
            .call(move |c| {
                let result_json = serde_json::to_string(&result)?;
                let tx = c.transaction()?;
                let n = tx.execute(
                    "UPDATE journal SET status = 'done', result = ?2 WHERE id = ?1",
                    params![result.command_id, result_json],
                )?;
                if n == 0 {
                    bail!("command {} is not in the journal", result.command_id);
                }
                let seq = insert_outbox(&tx, &OutboxItem::Result(result))?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        notify.notify_one();
        Ok(seq)
    }

    /// Commands journaled as running, with the command JSON when it was kept (see
    /// `journal_running`).
    pub async fn journal_running_commands(&self) -> Result<Vec<(String, Option<String>)>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, command FROM journal WHERE status = 'running'
                 AND id NOT IN (SELECT command_id FROM updates WHERE finished = 0)
                 AND id NOT IN (SELECT json_extract(record, '$.group') FROM updates
                   WHERE finished = 0 AND json_extract(record, '$.group') IS NOT NULL)
                 ORDER BY received_at",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, Option<String>)>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Ids of commands journaled as running (used at startup: a previous process died while
    /// running them), except unfinished updates, which converge from their own journal.
    pub async fn journal_running(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id FROM journal WHERE status = 'running'
                 AND id NOT IN (SELECT command_id FROM updates WHERE finished = 0)
                 AND id NOT IN (SELECT json_extract(record, '$.group') FROM updates
                   WHERE finished = 0 AND json_extract(record, '$.group') IS NOT NULL)
                 ORDER BY received_at",
            )?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }

    /// Deletes journal entries whose command expired more than a day before `now`.
    pub async fn prune_journal(&self, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = now - ChronoDuration::hours(JOURNAL_KEEP_AFTER_EXPIRY_HOURS);
        self.call(move |c| {
            // An unfinished update keeps its command: its result is still to be filed.
            let n = c.execute(
                "DELETE FROM journal WHERE expires_at < ?1
                 AND id NOT IN (SELECT command_id FROM updates WHERE finished = 0)",
                params![ts(cutoff)],
            )?;
            c.execute(
                "DELETE FROM updates WHERE finished = 1
                 AND command_id NOT IN (SELECT id FROM journal)",
                [],
            )?;
            Ok(n)
        })
        .await
    }
}

fn journal_get(c: &Connection, id: &str) -> Result<Option<JournalEntry>> {
    let row: Option<(String, Option<String>)> = c
        .query_row(
            "SELECT status, result FROM journal WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(None),
        Some((status, Some(result))) if status == "done" => {
            let result: CommandResult = serde_json::from_str(&result)
                .with_context(|| format!("journaled result of {id} is unreadable"))?;
            Ok(Some(JournalEntry::Done(Box::new(result))))
        }
        Some(_) => Ok(Some(JournalEntry::Running)),
    }
}
