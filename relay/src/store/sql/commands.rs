//! Statements for commands and their deliveries: the `impl Sql` functions behind `store/commands.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn create_command(
        tx: &mut dyn Conn,
        c: &NewCommand,
        job: Option<&NewJob>,
    ) -> Result<(), StoreError> {
        if let Some(job) = job {
            tx.execute(
                "INSERT INTO jobs (id, command_id, selector, max_concurrency, max_errors, state, \
                 created_at, expires_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8)",
                params![
                    job.id,
                    c.id,
                    job.selector.to_string(),
                    job.max_concurrency,
                    job.max_errors,
                    ts(job.created_at),
                    ts(job.expires_at),
                    job.created_by
                ],
            )?;
        }
        insert_command(tx, c)?;
        Ok(())
    }

    pub(in crate::store) fn command_info(
        tx: &mut dyn Conn,
        command_id: &str,
        agent_id: Option<&str>,
    ) -> Result<CommandLookup, StoreError> {
        let cmd: Option<(String, String, String, String, Option<String>)> = tx
            .query_row(
                "SELECT command, created_at, expires_at, created_by, job_id FROM commands \
                 WHERE id = ?1",
                [command_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((command, created_at, expires_at, created_by, job_id)) = cmd else {
            return Ok(CommandLookup::NotFound);
        };
        let agent_id = match agent_id {
            Some(a) => a.to_string(),
            None => {
                if job_id.is_some() {
                    return Ok(CommandLookup::NeedsAgent { job_id });
                }
                let only: Option<String> = tx
                    .query_row(
                        "SELECT agent_id FROM deliveries WHERE command_id = ?1 LIMIT 1",
                        [command_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                match only {
                    Some(a) => a,
                    None => return Ok(CommandLookup::NotFound),
                }
            }
        };
        let delivery: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT state, result FROM deliveries WHERE command_id = ?1 AND agent_id = ?2",
                params![command_id, agent_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, result)) = delivery else {
            return Ok(CommandLookup::NotFound);
        };
        let command: Command = from_json("command", &command)?;
        Ok(CommandLookup::Found(Box::new(CommandInfo {
            id: command_id.to_string(),
            agent_id,
            kind: command.kind(),
            command,
            state: parse_state(&state)?,
            created_at: parse_ts(&created_at)?,
            expires_at: parse_ts(&expires_at)?,
            created_by,
            job_id,
            result: result
                .as_deref()
                .map(|r| from_json::<CommandResult>("result", r))
                .transpose()?,
        })))
    }

    pub(in crate::store) fn pending_commands(
        tx: &mut dyn Conn,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, SignedCommand)>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT c.id, c.envelope, c.signature FROM deliveries d \
             JOIN commands c ON c.id = d.command_id \
             WHERE d.agent_id = ?1 AND d.state IN ('queued','sent','received') \
             AND c.expires_at > ?2 ORDER BY c.created_at, c.id",
        )?;
        let rows = stmt.query_map(params![agent_id, ts(now)], |r| {
            Ok((
                r.get::<String>(0)?,
                SignedCommand {
                    envelope: r.get(1)?,
                    signature: r.get(2)?,
                },
            ))
        })?;
        Ok(rows)
    }

    pub(in crate::store) fn mark_sent(
        tx: &mut dyn Conn,
        command_id: &str,
        agent_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One statement for the whole fan-out, not one per agent.
        tx.execute(
            "UPDATE deliveries SET state = 'sent', updated_at = ?3 \
             WHERE command_id = ?1 AND state = 'queued' \
             AND agent_id IN (SELECT value FROM json_each(?2))",
            params![command_id, to_json(&agent_ids), ts(now)],
        )?;
        Ok(())
    }

    pub(in crate::store) fn mark_received(
        tx: &mut dyn Conn,
        command_id: &str,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            "UPDATE deliveries SET state = 'received', updated_at = ?3 \
             WHERE command_id = ?1 AND agent_id = ?2 AND state IN ('queued','sent')",
            params![command_id, agent_id, ts(now)],
        )?;
        if n > 0 {
            return Ok(true);
        }
        // Already received (a duplicate `received`) is still a known delivery.
        let known: Option<String> = tx
            .query_row(
                "SELECT state FROM deliveries WHERE command_id = ?1 AND agent_id = ?2",
                params![command_id, agent_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(known.is_some())
    }

    pub(in crate::store) fn record_result(
        tx: &mut dyn Conn,
        agent_id: &str,
        result: &CommandResult,
        now: DateTime<Utc>,
    ) -> Result<ResultOutcome, StoreError> {
        let row: Option<(String, Option<String>, Option<String>, String)> = tx
            .query_row(
                "SELECT d.state, c.job_id, json_extract(d.result, '$.error.code'), c.kind \
                 FROM deliveries d JOIN commands c ON c.id = d.command_id \
                 WHERE d.command_id = ?1 AND d.agent_id = ?2",
                params![result.command_id, agent_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((state, job_id, error_code, kind)) = row else {
            return Ok(ResultOutcome::Unknown);
        };
        let state = parse_state(&state)?;
        // Endings the relay decided without hearing from the agent (expired before delivery,
        // no result in time) give way to the agent's real result: it says what happened.
        let relay_guess = state == DeliveryState::Undelivered
            || (state == DeliveryState::Failed
                && error_code.as_deref() == Some(relay_error_codes::NO_RESULT));
        if state.is_final() && !relay_guess {
            return Ok(ResultOutcome::AlreadyFinal);
        }
        let new_state = match result.status {
            ResultStatus::Succeeded => DeliveryState::Succeeded,
            ResultStatus::Failed => DeliveryState::Failed,
            ResultStatus::Rejected => DeliveryState::Rejected,
        };
        tx.execute(
            "UPDATE deliveries SET state = ?3, result = ?4, updated_at = ?5 \
             WHERE command_id = ?1 AND agent_id = ?2",
            params![
                result.command_id,
                agent_id,
                new_state.as_str(),
                to_json(result),
                ts(now)
            ],
        )?;
        let update = if kind == CommandKind::ContainerUpdate.as_str() {
            finish_update(tx, agent_id, result, new_state, now)?
        } else if kind == CommandKind::ComposeUpdate.as_str() {
            super::updates::finish_compose_update(tx, agent_id, result, new_state, now)?
        } else {
            None
        };
        let ended = if kind == CommandKind::AgentUpgrade.as_str() {
            // A reverted upgrade marks its build broken, ending its undelivered copies (see
            // `sql/releases.rs`).
            releases::upgrade_failed(tx, agent_id, result, now)?
        } else {
            Vec::new()
        };
        Ok(ResultOutcome::Recorded {
            state: new_state,
            job_id,
            replaced: relay_guess.then_some(state),
            ended,
            update,
        })
    }

    pub(in crate::store) fn expire_deliveries(
        tx: &mut dyn Conn,
        now: DateTime<Utc>,
        result_grace: chrono::Duration,
    ) -> Result<Vec<Finalised>, StoreError> {
        let mut ended = finalise_where(
            tx,
            "d.state IN ('pending','queued','sent') AND c.expires_at <= ?1",
            params![ts(now)],
            now,
            Ending::Undelivered,
        )?;
        // Accepted but never answered: the agent vanished (or lost its state) after `received`.
        // Waiting for ever would leave the command, and its job, running for ever.
        ended.extend(finalise_where(
            tx,
            "d.state = 'received' AND c.expires_at <= ?1",
            params![ts(now - result_grace)],
            now,
            Ending::Failed {
                code: relay_error_codes::NO_RESULT,
                message: "the agent accepted the command but no result arrived in time",
            },
        )?);
        Ok(ended)
    }
}
