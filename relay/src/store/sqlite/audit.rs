//! SQLite statements for the audit trail: the `impl Db` methods behind `store/audit.rs`.

use super::*;

impl Db {
    pub(in crate::store) fn audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit (ts, actor, action, target, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![ts(e.ts), e.actor, e.action, e.target, e.outcome, e.detail],
        )?;
        Ok(())
    }

    pub(in crate::store) fn recent_audit(
        conn: &Connection,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT ts, actor, action, target, outcome, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(t, actor, action, target, outcome, detail)| {
                Ok(AuditEntry {
                    ts: parse_ts(&t)?,
                    actor,
                    action,
                    target,
                    outcome,
                    detail,
                })
            })
            .collect()
    }
}
