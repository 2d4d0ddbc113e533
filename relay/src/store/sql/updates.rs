//! Statements for container update history: the `impl Sql` functions behind `store/updates.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn updates(
        tx: &mut dyn Conn,
        q: &UpdateQuery,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT {UPDATE_COLUMNS} FROM updates u LEFT JOIN deliveries d \
             ON d.command_id = u.command_id AND d.agent_id = u.agent_id \
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
