//! Statements for API tokens: the `impl Sql` functions behind `store/tokens.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn has_admin_token(tx: &mut dyn Conn) -> Result<bool, StoreError> {
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE scope = 'admin' AND name = 'admin'",
            params![],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    pub(in crate::store) fn create_api_token(
        tx: &mut dyn Conn,
        t: &NewApiToken,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO api_tokens (id, token_hash, name, scope, created_at, created_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                t.id,
                t.token_hash,
                t.name,
                t.scope.as_str(),
                ts(t.created_at),
                t.created_by
            ],
        )?;
        Ok(())
    }

    pub(in crate::store) fn api_tokens(tx: &mut dyn Conn) -> Result<Vec<ApiTokenInfo>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT id, name, scope, created_at, created_by, revoked_at FROM api_tokens \
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map(params![], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<String>(4)?,
                r.get::<Option<String>>(5)?,
            ))
        })?;
        rows.into_iter()
            .map(|(id, name, scope, created_at, created_by, revoked_at)| {
                Ok(ApiTokenInfo {
                    id,
                    name,
                    scope: scope.parse().map_err(StoreError::Corrupt)?,
                    created_at: parse_ts(&created_at)?,
                    created_by,
                    revoked_at: revoked_at.as_deref().map(parse_ts).transpose()?,
                })
            })
            .collect()
    }

    pub(in crate::store) fn revoke_api_token(
        tx: &mut dyn Conn,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let exists = tx
            .query_row("SELECT 1 FROM api_tokens WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, ts(now)],
            )?;
        }
        Ok(exists)
    }

    pub(in crate::store) fn api_caller(
        tx: &mut dyn Conn,
        token_hash: &str,
    ) -> Result<Option<ApiCaller>, StoreError> {
        let row: Option<(String, String, String)> = tx
            .query_row(
                "SELECT id, name, scope FROM api_tokens \
                 WHERE token_hash = ?1 AND revoked_at IS NULL",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(token_id, name, scope)| {
            let scope: Scope = scope.parse().map_err(StoreError::Corrupt)?;
            Ok(ApiCaller {
                token_id,
                name,
                scope,
            })
        })
        .transpose()
    }
}
