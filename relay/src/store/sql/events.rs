//! Statements for agent events: the `impl Sql` functions behind `store/events.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn insert_event(
        tx: &mut dyn Conn,
        agent_id: &str,
        seq: u64,
        event: &AgentEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            "INSERT OR IGNORE INTO events (agent_id, seq, received_at, kind, event) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                agent_id,
                seq as i64,
                ts(now),
                event.kind.as_str(),
                to_json(event)
            ],
        )?;
        if n > 0 && event.kind == EventKind::ContainerUpdate {
            if let Some(command_id) = event.attributes.get("command_id") {
                // A container of a compose.update (`<group>.<service>`): its own row.
                if let (Some(group), Some(name)) =
                    (event.attributes.get("group"), &event.container_name)
                {
                    super::updates::start_compose_member(
                        tx, agent_id, group, command_id, name, event.at,
                    )?;
                }
                // Progress only moves an update that has no report yet (a late event after the
                // result must not overwrite the report's final phase).
                // A pull event says how many layers are done (both numbers or neither).
                let layer = |k: &str| event.attributes.get(k).and_then(|v| v.parse::<u32>().ok());
                let (done, total) = match (layer("layers_done"), layer("layers_total")) {
                    (Some(d), Some(t)) => (Some(d), Some(t)),
                    _ => (None, None),
                };
                tx.execute(
                    "UPDATE updates SET phase = COALESCE(?3, phase), \
                     phase_at = CASE WHEN ?3 IS NULL THEN phase_at ELSE ?4 END, \
                     container_name = COALESCE(?5, container_name), \
                     layers_done = COALESCE(?6, layers_done), \
                     layers_total = COALESCE(?7, layers_total) \
                     WHERE command_id = ?1 AND agent_id = ?2 AND report IS NULL",
                    params![
                        command_id,
                        agent_id,
                        event.attributes.get("phase"),
                        ts(event.at),
                        event.container_name,
                        done,
                        total
                    ],
                )?;
            }
        }
        Ok(n > 0)
    }

    pub(in crate::store) fn events(
        tx: &mut dyn Conn,
        agent_id: &str,
        q: &EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT id, received_at, event FROM events WHERE agent_id = ?1 \
             AND (?2 IS NULL OR kind = ?2) AND id > ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![agent_id, q.kind, q.after_id.unwrap_or(0), q.limit as i64],
            |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?, r.get::<String>(2)?)),
        )?;
        rows.into_iter()
            .map(|(id, received_at, event)| {
                Ok(EventRecord {
                    id,
                    agent_id: agent_id.to_string(),
                    received_at: parse_ts(&received_at)?,
                    event: from_json("event", &event)?,
                })
            })
            .collect()
    }
}
