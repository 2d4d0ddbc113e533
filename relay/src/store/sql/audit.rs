//! Statements for the audit trail: the `impl Sql` functions behind `store/audit.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn audit(tx: &mut dyn Conn, e: &AuditEntry) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO audit (ts, actor, action, target, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![ts(e.ts), e.actor, e.action, e.target, e.outcome, e.detail],
        )?;
        Ok(())
    }

    pub(in crate::store) fn recent_audit(
        tx: &mut dyn Conn,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT ts, actor, action, target, outcome, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
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
