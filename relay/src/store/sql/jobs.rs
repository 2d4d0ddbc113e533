//! Statements for fan-out jobs: the `impl Sql` functions behind `store/jobs.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn running_jobs(tx: &mut dyn Conn) -> Result<Vec<String>, StoreError> {
        let mut stmt =
            tx.prepare("SELECT id FROM jobs WHERE state = 'running' ORDER BY created_at")?;
        let ids = stmt.query_map(params![], |r| r.get(0))?;
        Ok(ids)
    }

    pub(in crate::store) fn advance_job(
        tx: &mut dyn Conn,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobStep>, StoreError> {
        let job: Option<(String, u32, Option<u32>, String, bool, String)> = tx
            .query_row(
                "SELECT j.command_id, j.max_concurrency, j.max_errors, j.state, j.stopped, c.kind \
                 FROM jobs j JOIN commands c ON c.id = j.command_id WHERE j.id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((command_id, max_concurrency, max_errors, state, stopped, kind)) = job else {
            return Ok(None);
        };
        let state = parse_job_state(&state)?;
        let mut step = JobStep {
            command_id: command_id.clone(),
            ..JobStep::default()
        };
        if state != JobState::Running {
            step.state = Some(state);
            return Ok(Some(step));
        }
        let counts = delivery_counts(tx, &command_id)?;
        let plan = plan_step(&counts, max_concurrency, max_errors, stopped);
        if plan.stop {
            tx.execute("UPDATE jobs SET stopped = 1 WHERE id = ?1", [id])?;
            step.skipped = tx.execute(
                "UPDATE deliveries SET state = 'skipped', updated_at = ?2 \
                 WHERE command_id = ?1 AND state = 'pending'",
                params![command_id, ts(now)],
            )?;
        }
        if plan.dispatch > 0 {
            let mut stmt = tx.prepare(
                "SELECT agent_id FROM deliveries WHERE command_id = ?1 AND state = 'pending' \
                 ORDER BY position LIMIT ?2",
            )?;
            step.queued =
                stmt.query_map(params![command_id, plan.dispatch as i64], |r| r.get(0))?;
            drop(stmt);
            tx.execute(
                "UPDATE deliveries SET state = 'queued', updated_at = ?3 \
                 WHERE command_id = ?1 AND state = 'pending' \
                 AND agent_id IN (SELECT value FROM json_each(?2))",
                params![command_id, to_json(&step.queued), ts(now)],
            )?;
            if kind == CommandKind::ContainerUpdate.as_str()
                || kind == CommandKind::ComposeUpdate.as_str()
            {
                let queued: Vec<&str> = step.queued.iter().map(String::as_str).collect();
                start_updates(tx, &command_id, &queued, now)?;
            }
            step.signed = Some(tx.query_row(
                "SELECT envelope, signature FROM commands WHERE id = ?1",
                [&command_id],
                |r| {
                    Ok(SignedCommand {
                        envelope: r.get(0)?,
                        signature: r.get(1)?,
                    })
                },
            )?);
        }
        if plan.state != JobState::Running {
            tx.execute(
                "UPDATE jobs SET state = ?2 WHERE id = ?1",
                params![id, job_state_str(plan.state)],
            )?;
            step.finished = true;
        }
        step.state = Some(plan.state);
        Ok(Some(step))
    }

    pub(in crate::store) fn job_info(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<Option<JobInfo>, StoreError> {
        type JobRow = (
            String,
            String,
            u32,
            Option<u32>,
            String,
            String,
            String,
            String,
            String,
        );
        let job: Option<JobRow> = tx
            .query_row(
                "SELECT j.command_id, j.selector, j.max_concurrency, j.max_errors, j.state, \
                 j.created_at, j.expires_at, j.created_by, c.command \
                 FROM jobs j JOIN commands c ON c.id = j.command_id WHERE j.id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            command_id,
            selector,
            max_concurrency,
            max_errors,
            state,
            created_at,
            expires_at,
            created_by,
            command,
        )) = job
        else {
            return Ok(None);
        };
        let mut stmt = tx.prepare(
            "SELECT d.agent_id, a.name, d.state, d.result FROM deliveries d \
             JOIN agents a ON a.id = d.agent_id WHERE d.command_id = ?1 ORDER BY d.position",
        )?;
        let rows = stmt.query_map([&command_id], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<Option<String>>(3)?,
            ))
        })?;
        let mut targets = Vec::with_capacity(rows.len());
        for (agent_id, agent_name, state, result) in rows {
            targets.push(JobTarget {
                agent_id,
                agent_name,
                state: parse_state(&state)?,
                result: result
                    .as_deref()
                    .map(|r| from_json::<CommandResult>("result", r))
                    .transpose()?,
            });
        }
        let mut counts = JobCounts::default();
        for t in &targets {
            count_state(&mut counts, t.state, 1);
        }
        let command: Command = from_json("command", &command)?;
        Ok(Some(JobInfo {
            id: id.to_string(),
            command_id,
            selector: selector
                .parse::<Selector>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kind: command.kind(),
            command,
            state: parse_job_state(&state)?,
            max_concurrency,
            max_errors,
            created_at: parse_ts(&created_at)?,
            expires_at: parse_ts(&expires_at)?,
            created_by,
            counts,
            targets,
        }))
    }
}
