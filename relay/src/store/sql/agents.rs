//! Statements for agents, their labels, facts and latest heartbeats: the `impl Sql` functions behind `store/agents.rs`.

use super::*;

/// Migration 10: the orders of the paginated list ([`Db::agent_keys`]).
pub(in crate::store) const LIST_INDEXES: &str = r#"
CREATE INDEX agents_name ON agents(name, id);
CREATE INDEX agents_enrolled ON agents(enrolled_at, id);
"#;

/// Migration 12: counting revoked agents without a table scan (the fleet overview).
pub(in crate::store) const REVOKED_INDEX: &str = r#"
CREATE INDEX agents_revoked ON agents(revoked_at) WHERE revoked_at IS NOT NULL;
"#;

impl Sql {
    pub(in crate::store) fn agent(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let row = tx
            .query_row(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"),
                [id],
                AgentRow::read,
            )
            .optional()?;
        row.map(AgentRow::into_record).transpose()
    }

    pub(in crate::store) fn agents(tx: &mut dyn Conn) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT {AGENT_LIST_COLUMNS} FROM agents ORDER BY name, id"
        ))?;
        let rows = stmt.query_map(params![], AgentRow::read)?;
        rows.into_iter().map(AgentRow::into_record).collect()
    }

    pub(in crate::store) fn agent_keys(
        tx: &mut dyn Conn,
        order: AgentOrder,
        after: Option<&AgentPosition>,
        revoked: Option<bool>,
        limit: u32,
    ) -> Result<Vec<AgentKey>, StoreError> {
        // Keyset paging on an index of (key, id): each page is one index range scan, however
        // deep it is.
        let (column, descending) = match order {
            AgentOrder::Name => ("name", false),
            AgentOrder::NameDesc => ("name", true),
            AgentOrder::Enrolled => ("enrolled_at", false),
            AgentOrder::EnrolledDesc => ("enrolled_at", true),
        };
        let (cmp, dir) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let mut conditions = Vec::new();
        if after.is_some() {
            conditions.push(format!("({column}, id) {cmp} (?2, ?3)"));
        }
        match revoked {
            Some(true) => conditions.push("revoked_at IS NOT NULL".to_string()),
            Some(false) => conditions.push("revoked_at IS NULL".to_string()),
            None => {}
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT id, name, labels, revoked_at IS NOT NULL, {column} FROM agents {filter} \
             ORDER BY {column} {dir}, id {dir} LIMIT ?1"
        ))?;
        let (key, id) = after.map_or(("", ""), |p| (p.key.as_str(), p.id.as_str()));
        let read = |r: &Row| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<bool>(3)?,
                r.get::<String>(4)?,
            ))
        };
        let rows = if after.is_some() {
            stmt.query_map(params![limit, key, id], read)?
        } else {
            stmt.query_map(params![limit], read)?
        };
        rows.into_iter()
            .map(|(id, name, labels, revoked, key)| {
                Ok(AgentKey {
                    position: AgentPosition {
                        key,
                        id: id.clone(),
                    },
                    id,
                    name,
                    labels: from_json("labels", &labels)?,
                    revoked,
                })
            })
            .collect()
    }

    pub(in crate::store) fn agents_by_ids(
        tx: &mut dyn Conn,
        ids: &[String],
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {AGENT_LIST_COLUMNS} FROM agents \
             WHERE id IN (SELECT value FROM json_each(?1))"
        ))?;
        let rows = stmt.query_map([to_json(&ids)], AgentRow::read)?;
        let mut by_id: std::collections::HashMap<String, AgentRecord> = rows
            .into_iter()
            .map(|r| r.into_record().map(|a| (a.id.clone(), a)))
            .collect::<Result<_, _>>()?;
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// What the websocket handshake needs, without the facts and heartbeat JSON.
    pub(in crate::store) fn agent_auth(
        tx: &mut dyn Conn,
        id: &str,
    ) -> Result<Option<AgentAuth>, StoreError> {
        let row: Option<(String, bool, String, String, String)> = tx
            .query_row(
                "SELECT public_key, revoked_at IS NOT NULL, labels, name, agent_version \
                 FROM agents WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        row.map(|(public_key, revoked, labels, name, agent_version)| {
            Ok(AgentAuth {
                public_key,
                revoked,
                labels: from_json("labels", &labels)?,
                name,
                agent_version,
            })
        })
        .transpose()
    }

    /// Ids and labels of the agents that are not revoked (job target resolution).
    pub(in crate::store) fn agent_targets(
        tx: &mut dyn Conn,
    ) -> Result<Vec<(String, Labels)>, StoreError> {
        let mut stmt =
            tx.prepare("SELECT id, labels FROM agents WHERE revoked_at IS NULL ORDER BY name, id")?;
        let rows = stmt.query_map(params![], |r| {
            Ok((r.get::<String>(0)?, r.get::<String>(1)?))
        })?;
        rows.into_iter()
            .map(|(id, labels)| Ok((id, from_json("labels", &labels)?)))
            .collect()
    }

    /// The last flushed heartbeat of every agent that is not revoked (to fill the heartbeat
    /// cache once at startup).
    /// Every unrevoked agent's latest stored heartbeat; with `since`, only those written at or
    /// after it (what the other relays of a cluster flushed, `peers.rs`).
    pub(in crate::store) fn latest_heartbeats(
        tx: &mut dyn Conn,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<HeartbeatWrite>, StoreError> {
        let base = "SELECT id, last_heartbeat, last_heartbeat_at FROM agents \
             WHERE revoked_at IS NULL AND last_heartbeat IS NOT NULL \
             AND last_heartbeat_at IS NOT NULL";
        let read = |r: &Row| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
            ))
        };
        let rows = match since {
            None => tx.prepare(base)?.query_map(params![], read)?,
            Some(t) => tx
                .prepare(&format!("{base} AND last_heartbeat_at >= ?1"))?
                .query_map([ts(t)], read)?,
        };
        rows.into_iter()
            .map(|(agent_id, heartbeat, at)| {
                Ok(HeartbeatWrite {
                    agent_id,
                    heartbeat: std::sync::Arc::new(from_json::<Heartbeat>(
                        "heartbeat",
                        &heartbeat,
                    )?),
                    received_at: parse_ts(&at)?,
                })
            })
            .collect()
    }

    pub(in crate::store) fn set_agent_labels(
        tx: &mut dyn Conn,
        id: &str,
        labels: &Labels,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let n = tx.execute(
            "UPDATE agents SET labels = ?2 WHERE id = ?1",
            params![id, to_json(labels)],
        )?;
        if n == 0 {
            return Ok(None);
        }
        Sql::agent(tx, id)
    }

    pub(in crate::store) fn set_agent_version(
        tx: &mut dyn Conn,
        id: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE agents SET agent_version = ?2 WHERE id = ?1",
            params![id, version],
        )?;
        Ok(())
    }

    pub(in crate::store) fn revoke_agent(
        tx: &mut dyn Conn,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Finalised>>, StoreError> {
        let n = tx.execute(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, ts(now)],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let mut ended = finalise_where(
            tx,
            "d.agent_id = ?1 AND d.state IN ('pending','queued','sent')",
            params![id],
            now,
            Ending::Undelivered,
        )?;
        // The agent journaled these and may have run them: "undelivered" would be a lie.
        ended.extend(finalise_where(
            tx,
            "d.agent_id = ?1 AND d.state = 'received'",
            params![id],
            now,
            Ending::Failed {
                code: relay_error_codes::AGENT_REVOKED,
                message: "the agent was revoked after it accepted the command; \
                          whether the command ran is unknown",
            },
        )?);
        Ok(Some(ended))
    }

    pub(in crate::store) fn save_heartbeats(
        tx: &mut dyn Conn,
        batch: &[HeartbeatWrite],
    ) -> Result<(), StoreError> {
        {
            let mut stmt = tx.prepare(
                "UPDATE agents SET last_heartbeat = ?2, last_heartbeat_at = ?3, \
                 agent_version = ?4 WHERE id = ?1",
            )?;
            for hb in batch {
                stmt.execute(params![
                    hb.agent_id,
                    to_json(&*hb.heartbeat),
                    ts(hb.received_at),
                    hb.heartbeat.agent_version
                ])?;
            }
        }
        metrics::fold_heartbeats(tx, batch)?;
        Ok(())
    }
}
