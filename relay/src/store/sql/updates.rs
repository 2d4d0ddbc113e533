//! Statements for container update history: the `impl Sql` functions behind `store/updates.rs`,
//! and the rows of a `compose.update` (issue 17, part 1).
//!
//! A `compose.update` is recorded like `container.update`s, one row per container: the row of
//! a container has the command id the agent journals it under, `<group>.<service>` (unique per
//! agent like any command id), `group_id` the `compose.update`'s id, and the project and
//! service. Which containers a project update takes is only known to the agent, so at dispatch
//! the command gets one row for the whole project (`container` = the project, no service);
//! a container's row starts with the agent's first progress event about it (attribute
//! `group`) or with the result, and the result replaces the project's row by the
//! containers' rows (a refusal that touched no container keeps the project's row, with the
//! error). The update rules (`update_rolled_back`, `rollback_failed`) and the alert
//! suppression read these rows as they read a single update's.

use super::*;
use flotilla_shared::compose::ComposeUpdateReport;

/// Migration 19: the compose columns of `updates` (see the module doc).
pub(in crate::store) const COMPOSE_COLUMNS: &str = "ALTER TABLE updates ADD COLUMN group_id TEXT;
ALTER TABLE updates ADD COLUMN compose_project TEXT;
ALTER TABLE updates ADD COLUMN compose_service TEXT;
CREATE INDEX updates_group ON updates(group_id) WHERE group_id IS NOT NULL;";

/// Starts the project rows of a `compose.update` for these agents (when it is dispatched to
/// them). A no-op for other kinds and for rows that already exist.
pub(super) fn start_compose_updates(
    tx: &mut dyn Conn,
    command_id: &str,
    agent_ids: &[&str],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO updates (command_id, agent_id, job_id, container, image, health, \
         strategy, requested_by, created_at, compose_project) \
         SELECT c.id, a.value, c.job_id, json_extract(c.command, '$.args.project'), \
         json_extract(c.command, '$.args.image'), \
         COALESCE(json_extract(c.command, '$.args.health'), 'auto'), \
         COALESCE(json_extract(c.command, '$.args.strategy'), 'stop-first'), \
         c.created_by, ?3, json_extract(c.command, '$.args.project') \
         FROM commands c JOIN json_each(?2) a ON 1 = 1 WHERE c.id = ?1 AND c.kind = 'compose.update'",
        params![command_id, to_json(&agent_ids), ts(at)],
    )?;
    Ok(())
}

/// Starts the row of one container of the `compose.update` `group` (its journal id `sub_id`,
/// `<group>.<service>`), from the group's command; a no-op when it exists.
pub(super) fn start_compose_member(
    tx: &mut dyn Conn,
    agent_id: &str,
    group: &str,
    sub_id: &str,
    container: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let service = sub_id
        .strip_prefix(group)
        .and_then(|s| s.strip_prefix('.'))
        .filter(|s| !s.is_empty())
        .unwrap_or(container);
    tx.execute(
        "INSERT OR IGNORE INTO updates (command_id, agent_id, job_id, container, container_name, \
         image, health, strategy, requested_by, created_at, group_id, compose_project, \
         compose_service) \
         SELECT ?1, ?2, c.job_id, ?3, ?3, json_extract(c.command, '$.args.image'), \
         COALESCE(json_extract(c.command, '$.args.health'), 'auto'), \
         COALESCE(json_extract(c.command, '$.args.strategy'), 'stop-first'), c.created_by, \
         COALESCE((SELECT g.created_at FROM updates g WHERE g.command_id = c.id \
           AND g.agent_id = ?2), ?4), \
         c.id, json_extract(c.command, '$.args.project'), ?5 \
         FROM commands c WHERE c.id = ?6 AND c.kind = 'compose.update'",
        params![sub_id, agent_id, container, ts(at), service, group],
    )?;
    Ok(())
}

/// Finishes a `compose.update`'s rows with the agent's result: one row per container of the
/// report (its own report, outcome and error), the project's row removed when the report
/// names containers. Returns the group's final outcome and image (one `update.finished`).
pub(super) fn finish_compose_update(
    tx: &mut dyn Conn,
    agent_id: &str,
    result: &CommandResult,
    state: DeliveryState,
    now: DateTime<Utc>,
) -> Result<Option<UpdateEnded>, StoreError> {
    let group = result.command_id.as_str();
    start_compose_updates(tx, group, &[agent_id], now)?;
    let report: Option<ComposeUpdateReport> = result
        .output
        .as_ref()
        .and_then(|o| ComposeUpdateReport::deserialize(o).ok());
    let project_row: Option<(bool, String)> = tx
        .query_row(
            "SELECT finished_at IS NOT NULL, image FROM updates \
             WHERE command_id = ?1 AND agent_id = ?2",
            params![group, agent_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let services = report.as_ref().map_or(&[][..], |r| r.services.as_slice());
    for r in services {
        let service = r
            .compose
            .as_ref()
            .map(|c| c.service.clone())
            .filter(|s| !s.is_empty() && !s.contains(','))
            .unwrap_or_else(|| r.container.clone());
        let sub_id = format!("{group}.{service}");
        start_compose_member(tx, agent_id, group, &sub_id, &r.container, now)?;
        let own_state = if r.outcome == UpdateOutcome::Updated {
            DeliveryState::Succeeded
        } else {
            DeliveryState::Failed
        };
        let code = r.outcome.error_code();
        let message = r.reason.clone().unwrap_or_else(|| r.outcome.to_string());
        tx.execute(
            "UPDATE updates SET state = ?3, error_code = ?4, error_message = ?5, outcome = ?6, \
             report = ?7, finished_at = ?8, phase = ?9, container_name = ?10 \
             WHERE command_id = ?1 AND agent_id = ?2",
            params![
                sub_id,
                agent_id,
                own_state.as_str(),
                code,
                code.map(|_| message),
                r.outcome.as_str(),
                to_json(r),
                ts(result.finished_at),
                r.phase.as_str(),
                r.container,
            ],
        )?;
    }
    // Containers the agent reported progress on but the report does not name end with it.
    end_compose_members(
        tx,
        group,
        agent_id,
        state,
        result.error.as_ref().map(|e| e.code.as_str()),
        result.error.as_ref().map(|e| e.message.as_str()),
        result.finished_at,
    )?;
    if services.is_empty() {
        tx.execute(
            "UPDATE updates SET state = ?3, error_code = ?4, error_message = ?5, outcome = ?6, \
             finished_at = ?7 WHERE command_id = ?1 AND agent_id = ?2",
            params![
                group,
                agent_id,
                state.as_str(),
                result.error.as_ref().map(|e| e.code.as_str()),
                result.error.as_ref().map(|e| e.message.as_str()),
                report.as_ref().map(|r| r.outcome.as_str()),
                ts(result.finished_at),
            ],
        )?;
    } else {
        tx.execute(
            "DELETE FROM updates WHERE command_id = ?1 AND agent_id = ?2",
            params![group, agent_id],
        )?;
    }
    Ok(project_row.map(|(replaced, image)| UpdateEnded {
        outcome: report
            .as_ref()
            .map_or(state.as_str(), |r| r.outcome.as_str())
            .to_string(),
        image,
        replaced,
    }))
}

/// Ends the unfinished container rows of the `compose.update` `group` as its delivery ended
/// (a relay-made ending, or containers a result did not name).
pub(super) fn end_compose_members(
    tx: &mut dyn Conn,
    group: &str,
    agent_id: &str,
    state: DeliveryState,
    code: Option<&str>,
    message: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE updates SET state = ?3, error_code = ?4, error_message = ?5, finished_at = ?6 \
         WHERE group_id = ?1 AND agent_id = ?2 AND finished_at IS NULL",
        params![group, agent_id, state.as_str(), code, message, ts(at)],
    )?;
    Ok(())
}

impl Sql {
    pub(in crate::store) fn updates(
        tx: &mut dyn Conn,
        q: &UpdateQuery,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT {UPDATE_COLUMNS} FROM updates u LEFT JOIN deliveries d \
             ON d.command_id = COALESCE(u.group_id, u.command_id) AND d.agent_id = u.agent_id \
             WHERE (?1 IS NULL OR u.agent_id = ?1) \
             AND (?2 IS NULL OR u.container = ?2 OR u.container_name = ?2) \
             AND (?3 IS NULL OR (CASE WHEN u.finished_at IS NULL THEN 1 ELSE 0 END) = ?3) \
             AND (?4 IS NULL OR u.command_id = ?4) \
             ORDER BY u.created_at DESC, u.command_id DESC, u.agent_id LIMIT ?5"
        ))?;
        let rows = stmt.query_map(
            params![q.agent_id, q.container, q.active, q.command_id, q.limit],
            UpdateRow::read,
        )?;
        rows.into_iter().map(UpdateRow::into_record).collect()
    }

    /// The newest unfinished update of this container (asked for by this name or id, or
    /// reported under this name), if any: its command id.
    pub(in crate::store) fn updating(
        tx: &mut dyn Conn,
        agent_id: &str,
        container: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(tx
            .query_row(
                "SELECT command_id FROM updates WHERE agent_id = ?1 AND finished_at IS NULL \
                 AND (container = ?2 OR container_name = ?2) \
                 ORDER BY created_at DESC LIMIT 1",
                params![agent_id, container],
                |r| r.get(0),
            )
            .optional()?)
    }
}
