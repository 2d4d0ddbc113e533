//! The container update journal (`updates`): what an update needs to converge after a crash,
//! the phase it reached and its record (JSON, the updater's own format), saved before each step.
//! Finishing an update closes its record, journals the command's result and queues it in one
//! transaction.

use super::outbox::insert_outbox;
use super::{ts, State};
use anyhow::Result;
use chrono::Utc;
use flotilla_shared::command::CommandResult;
use flotilla_shared::protocol::OutboxItem;
use rusqlite::params;

// === impl State ===

impl State {
    /// Saves an update's journal record (JSON) and the phase it reached; durable when this
    /// returns.
    pub async fn save_update(&self, command_id: &str, phase: &str, record: String) -> Result<()> {
        let (id, phase) = (command_id.to_string(), phase.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO updates (command_id, phase, record, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (command_id) DO UPDATE SET phase = excluded.phase,
                 record = excluded.record, updated_at = excluded.updated_at",
                params![id, phase, record, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    /// Records of updates that have not finished (a previous process stopped during them).
    pub async fn unfinished_updates(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT record FROM updates WHERE finished = 0 ORDER BY updated_at")?;
            let rows = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Finishes an update: its journal record, the command journal and the outbox in one
    /// transaction.
    pub async fn finish_update(&self, result: CommandResult, record: String) -> Result<u64> {
        let notify = self.outbox_notify.clone();
        let seq = self
            .call(move |c| {
                let result_json = serde_json::to_string(&result)?;
                let tx = c.transaction()?;
                tx.execute(
                    "UPDATE updates SET finished = 1, phase = 'done', record = ?2, updated_at = ?3
                     WHERE command_id = ?1",
                    params![result.command_id, record, ts(Utc::now())],
                )?;
                // The journal row may be gone (an older agent pruned it): write it again, so the
                // update is finished for good and its result still reaches the relay.
                let now = ts(Utc::now());
                tx.execute(
                    "INSERT INTO journal (id, received_at, expires_at, status, result)
                     VALUES (?1, ?3, ?3, 'done', ?2)
                     ON CONFLICT (id) DO UPDATE SET status = 'done', result = excluded.result",
                    params![result.command_id, result_json, now],
                )?;
                let seq = insert_outbox(&tx, &OutboxItem::Result(result))?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        notify.notify_one();
        Ok(seq)
    }

    // --- compose (issue 17, part 1) ---
    /// Every record (finished or not) of the containers of the `compose.update` `group`, by
    /// command id (`<group>.<service>`): what a recovery of the group decides from.
    pub async fn group_update_records(&self, group: &str) -> Result<Vec<String>> {
        let group = group.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT record FROM updates WHERE json_extract(record, '$.group') = ?1
                 ORDER BY command_id",
            )?;
            let rows = stmt
                .query_map([group], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Closes the record of one container's run inside a `compose.update` (the group's one
    /// result is journaled by `finish_update`).
    pub async fn finish_update_record(&self, id: &str, record: String) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE updates SET finished = 1, phase = 'done', record = ?2, updated_at = ?3
                 WHERE command_id = ?1",
                params![id, record, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }
}
