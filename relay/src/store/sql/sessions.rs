//! Statements for dashboard sessions: the `impl Sql` functions behind `store/sessions.rs`.

use super::*;
use crate::store::sessions::{NewWebSession, WebSession};

/// Migration 8: dashboard sessions. The token's revocation ends its sessions through the join
/// in [`Db::web_session`].
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL REFERENCES api_tokens(id),
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX web_sessions_last_seen ON web_sessions(last_seen_at);
CREATE INDEX web_sessions_created ON web_sessions(created_at);
"#;

impl Sql {
    pub(in crate::store) fn create_web_session(
        tx: &mut dyn Conn,
        s: &NewWebSession,
        idle_cutoff: DateTime<Utc>,
        absolute_cutoff: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        tx.execute(
            "DELETE FROM web_sessions WHERE last_seen_at <= ?1 OR created_at <= ?2",
            params![ts(idle_cutoff), ts(absolute_cutoff)],
        )?;
        tx.execute(
            "INSERT INTO web_sessions (id_hash, token_id, csrf, created_at, last_seen_at, address) \
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            params![s.id_hash, s.token_id, s.csrf, ts(s.created_at), s.address],
        )?;
        Ok(())
    }

    pub(in crate::store) fn web_session(
        tx: &mut dyn Conn,
        id_hash: &str,
    ) -> Result<Option<WebSession>, StoreError> {
        let row: Option<(String, String, String, String, String, String)> = tx
            .query_row(
                "SELECT t.id, t.name, t.scope, s.csrf, s.created_at, s.last_seen_at \
                 FROM web_sessions s JOIN api_tokens t ON t.id = s.token_id \
                 WHERE s.id_hash = ?1 AND t.revoked_at IS NULL",
                [id_hash],
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
        row.map(|(token_id, name, scope, csrf, created_at, last_seen_at)| {
            Ok(WebSession {
                caller: ApiCaller {
                    token_id,
                    name,
                    scope: scope.parse().map_err(StoreError::Corrupt)?,
                },
                csrf,
                created_at: parse_ts(&created_at)?,
                last_seen_at: parse_ts(&last_seen_at)?,
            })
        })
        .transpose()
    }

    pub(in crate::store) fn touch_web_session(
        tx: &mut dyn Conn,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE web_sessions SET last_seen_at = ?2 WHERE id_hash = ?1 AND last_seen_at < ?2",
            params![id_hash, ts(now)],
        )?;
        Ok(())
    }

    pub(in crate::store) fn delete_web_session(
        tx: &mut dyn Conn,
        id_hash: &str,
    ) -> Result<bool, StoreError> {
        let n = tx.execute("DELETE FROM web_sessions WHERE id_hash = ?1", [id_hash])?;
        Ok(n > 0)
    }
}
