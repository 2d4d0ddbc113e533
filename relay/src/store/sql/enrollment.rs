//! Statements for enrollment tokens and enrolling: the `impl Sql` functions behind `store/enrollment.rs`.

use super::*;

impl Sql {
    pub(in crate::store) fn create_enrollment_token(
        tx: &mut dyn Conn,
        t: &NewEnrollmentToken,
    ) -> Result<EnrollmentTokenInfo, StoreError> {
        tx.execute(
            "INSERT INTO enrollment_tokens \
             (id, token_hash, labels, created_at, expires_at, max_uses, note, created_by, \
             agent_label_keys) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                t.id,
                t.token_hash,
                to_json(&t.labels),
                ts(t.created_at),
                ts(t.expires_at),
                t.max_uses,
                t.note,
                t.created_by,
                to_json(&t.agent_label_keys)
            ],
        )?;
        Ok(EnrollmentTokenInfo {
            id: t.id.clone(),
            labels: t.labels.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            uses: 0,
            revoked: false,
            note: t.note.clone(),
            created_by: t.created_by.clone(),
            agent_label_keys: t.agent_label_keys.clone(),
        })
    }

    pub(in crate::store) fn list_enrollment_tokens(
        tx: &mut dyn Conn,
    ) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![], TokenRow::read)?;
        rows.into_iter().map(TokenRow::into_info).collect()
    }

    pub(in crate::store) fn revoke_enrollment_token(
        tx: &mut dyn Conn,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM enrollment_tokens WHERE id = ?1",
                [id],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if exists {
            tx.execute(
                "UPDATE enrollment_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, ts(now)],
            )?;
        }
        Ok(exists)
    }

    pub(in crate::store) fn enroll(
        tx: &mut dyn Conn,
        token_hash: &str,
        agent: NewAgent,
        now: DateTime<Utc>,
    ) -> Result<Result<(AgentRecord, String), EnrollRefusal>, StoreError> {
        let token = tx
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE token_hash = ?1"),
                [token_hash],
                TokenRow::read,
            )
            .optional()?;
        let Some(token) = token else {
            return Ok(Err(EnrollRefusal::Unknown));
        };
        let token = token.into_info()?;
        if token.revoked {
            return Ok(Err(EnrollRefusal::Revoked));
        }
        if token.uses >= token.max_uses {
            return Ok(Err(EnrollRefusal::Used));
        }
        if token.expires_at <= now {
            return Ok(Err(EnrollRefusal::Expired));
        }
        let labels = crate::model::enrollment::enrolled_labels(
            &token.labels,
            &token.agent_label_keys,
            &agent.labels,
        );
        let name = agent
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| {
                if agent.facts.hostname.is_empty() {
                    agent.id.clone()
                } else {
                    agent.facts.hostname.clone()
                }
            });
        let record = AgentRecord {
            id: agent.id,
            name,
            public_key: agent.public_key,
            labels,
            agent_version: agent.facts.agent_version.clone(),
            facts: agent.facts,
            enrolled_at: now,
            revoked_at: None,
            last_heartbeat: None,
            last_heartbeat_at: None,
            claimed_labels: agent.labels,
        };
        tx.execute(
            "INSERT INTO agents (id, name, public_key, labels, facts, enrolled_at, agent_version, \
             enrollment_token_id, claimed_labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                record.id,
                record.name,
                record.public_key,
                to_json(&record.labels),
                to_json(&record.facts),
                ts(now),
                record.agent_version,
                token.id,
                to_json(&record.claimed_labels)
            ],
        )?;
        tx.execute(
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?1",
            [&token.id],
        )?;
        Ok(Ok((record, token.id)))
    }
}
