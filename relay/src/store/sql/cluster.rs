//! Statements for several relays on one database (`store/cluster.rs`): the relays' membership,
//! which relay holds which agent's connection (the routing table), and the singleton leases
//! with their epochs (fencing tokens).
//!
//! Times are the relays' clocks: a lease's safety does not depend on them (every fenced write
//! checks holder and epoch in its own transaction, see [`Sql::check_fence`]), only how soon a
//! dead holder's lease is taken over does.

use super::*;
use crate::store::cluster::{Fence, LeaseRow, RelayRow, Route};

/// Migration 14: relays, routes and leases. Used on PostgreSQL only (one SQLite relay holds
/// every lease), created on both so the schema stays one.
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE relays (
    relay_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    version TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE TABLE agent_routes (
    agent_id TEXT PRIMARY KEY,
    relay_id TEXT NOT NULL,
    connected_at TEXT NOT NULL,
    agent_version TEXT NOT NULL
);
CREATE INDEX agent_routes_relay ON agent_routes(relay_id);
CREATE INDEX agents_heartbeat_at ON agents(last_heartbeat_at);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at TEXT NOT NULL
);
"#;

impl Sql {
    pub(in crate::store) fn relay_seen(tx: &mut dyn Conn, r: &RelayRow) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO relays (relay_id, started_at, seen_at, version, address) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (relay_id) DO UPDATE SET seen_at = excluded.seen_at",
            params![
                r.relay_id,
                ts(r.started_at),
                ts(r.seen_at),
                r.version,
                r.address
            ],
        )?;
        Ok(())
    }

    /// Relays seen at or after `since`.
    pub(in crate::store) fn live_relays(
        tx: &mut dyn Conn,
        since: DateTime<Utc>,
    ) -> Result<Vec<RelayRow>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT relay_id, started_at, seen_at, version, address FROM relays \
             WHERE seen_at >= ?1 ORDER BY relay_id",
        )?;
        let rows = stmt.query_map([ts(since)], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<String>(4)?,
            ))
        })?;
        rows.into_iter()
            .map(|(relay_id, started, seen, version, address)| {
                Ok(RelayRow {
                    relay_id,
                    started_at: parse_ts(&started)?,
                    seen_at: parse_ts(&seen)?,
                    version,
                    address,
                })
            })
            .collect()
    }

    /// Forgets relays not seen since `before` and the routes through them (their agents are
    /// not connected anywhere until they reconnect). Returns how many relays went.
    pub(in crate::store) fn forget_dead_relays(
        tx: &mut dyn Conn,
        before: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        tx.execute(
            "DELETE FROM agent_routes WHERE relay_id IN \
             (SELECT relay_id FROM relays WHERE seen_at < ?1)",
            [ts(before)],
        )?;
        Ok(tx.execute("DELETE FROM relays WHERE seen_at < ?1", [ts(before)])?)
    }

    /// A relay leaving on purpose: its row and routes go now.
    pub(in crate::store) fn relay_left(
        tx: &mut dyn Conn,
        relay_id: &str,
    ) -> Result<(), StoreError> {
        tx.execute("DELETE FROM agent_routes WHERE relay_id = ?1", [relay_id])?;
        tx.execute("DELETE FROM relays WHERE relay_id = ?1", [relay_id])?;
        Ok(())
    }

    pub(in crate::store) fn route_connected(
        tx: &mut dyn Conn,
        r: &Route,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO agent_routes (agent_id, relay_id, connected_at, agent_version) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (agent_id) DO UPDATE SET relay_id = excluded.relay_id, \
             connected_at = excluded.connected_at, agent_version = excluded.agent_version",
            params![r.agent_id, r.relay_id, ts(r.connected_at), r.agent_version],
        )?;
        Ok(())
    }

    /// Removes the route if it is still this connection's (a newer connection, here or on
    /// another relay, replaced it otherwise).
    pub(in crate::store) fn route_disconnected(
        tx: &mut dyn Conn,
        agent_id: &str,
        relay_id: &str,
        connected_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        tx.execute(
            "DELETE FROM agent_routes WHERE agent_id = ?1 AND relay_id = ?2 AND connected_at = ?3",
            params![agent_id, relay_id, ts(connected_at)],
        )?;
        Ok(())
    }

    /// The routes through `relay_id`: (agent, connected_at).
    pub(in crate::store) fn own_routes(
        tx: &mut dyn Conn,
        relay_id: &str,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let mut stmt =
            tx.prepare("SELECT agent_id, connected_at FROM agent_routes WHERE relay_id = ?1")?;
        let rows = stmt.query_map([relay_id], |r| {
            Ok((r.get::<String>(0)?, r.get::<String>(1)?))
        })?;
        rows.into_iter()
            .map(|(agent, at)| Ok((agent, parse_ts(&at)?)))
            .collect()
    }

    /// The routes through live relays other than `me` (seen at or after `since`).
    pub(in crate::store) fn remote_routes(
        tx: &mut dyn Conn,
        me: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Route>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT a.agent_id, a.relay_id, a.connected_at, a.agent_version \
             FROM agent_routes a JOIN relays r ON r.relay_id = a.relay_id \
             WHERE a.relay_id <> ?1 AND r.seen_at >= ?2",
        )?;
        let rows = stmt.query_map(params![me, ts(since)], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
            ))
        })?;
        rows.into_iter()
            .map(|(agent_id, relay_id, at, agent_version)| {
                Ok(Route {
                    agent_id,
                    relay_id,
                    connected_at: parse_ts(&at)?,
                    agent_version,
                })
            })
            .collect()
    }

    /// Deliveries still queued for agents whose connection this relay holds: what a lost
    /// wake-up left behind (see `crate::cluster`).
    pub(in crate::store) fn queued_for_relay(
        tx: &mut dyn Conn,
        relay_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, SignedCommand, String)>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT c.id, c.envelope, c.signature, d.agent_id FROM deliveries d \
             JOIN agent_routes a ON a.agent_id = d.agent_id \
             JOIN commands c ON c.id = d.command_id \
             WHERE a.relay_id = ?1 AND d.state = 'queued' AND c.expires_at > ?2 \
             ORDER BY c.created_at, c.id",
        )?;
        stmt.query_map(params![relay_id, ts(now)], |r| {
            Ok((
                r.get::<String>(0)?,
                SignedCommand {
                    envelope: r.get(1)?,
                    signature: r.get(2)?,
                },
                r.get::<String>(3)?,
            ))
        })
        .map_err(Into::into)
    }

    /// The signed command and its still-queued targets among `agent_ids`.
    pub(in crate::store) fn queued_targets(
        tx: &mut dyn Conn,
        command_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(SignedCommand, Vec<String>)>, StoreError> {
        let signed = tx
            .query_row(
                "SELECT envelope, signature FROM commands WHERE id = ?1 AND expires_at > ?2",
                params![command_id, ts(now)],
                |r| {
                    Ok(SignedCommand {
                        envelope: r.get(0)?,
                        signature: r.get(1)?,
                    })
                },
            )
            .optional()?;
        let Some(signed) = signed else {
            return Ok(None);
        };
        let mut stmt = tx.prepare(
            "SELECT agent_id FROM deliveries WHERE command_id = ?1 AND state = 'queued'",
        )?;
        let agents = stmt.query_map([command_id], |r| r.get::<String>(0))?;
        Ok(Some((signed, agents)))
    }

    /// Takes or renews the lease `name` for `holder` until `expires_at`: free, expired or
    /// already the holder's. A takeover raises the epoch; a renewal keeps it. None when another
    /// relay holds it unexpired.
    pub(in crate::store) fn acquire_lease(
        tx: &mut dyn Conn,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let current: Option<(String, i64, String)> = tx
            .query_row(
                "SELECT holder, epoch, expires_at FROM leases WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let epoch = match current {
            None => {
                tx.execute(
                    "INSERT INTO leases (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ?3)",
                    params![name, holder, ts(expires_at)],
                )?;
                return Ok(Some(1));
            }
            Some((h, epoch, _)) if h == holder => epoch,
            Some((_, epoch, until)) if parse_ts(&until)? <= now => epoch + 1,
            Some(_) => return Ok(None),
        };
        tx.execute(
            "UPDATE leases SET holder = ?2, epoch = ?3, expires_at = ?4 WHERE name = ?1",
            params![name, holder, epoch, ts(expires_at)],
        )?;
        Ok(Some(epoch))
    }

    /// Gives a held lease up (expired at once, epoch kept): the next relay takes it without
    /// waiting for it to run out.
    pub(in crate::store) fn release_lease(
        tx: &mut dyn Conn,
        name: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE leases SET expires_at = ?3 WHERE name = ?1 AND holder = ?2",
            params![name, holder, ts(DateTime::<Utc>::UNIX_EPOCH)],
        )?;
        Ok(())
    }

    pub(in crate::store) fn leases(tx: &mut dyn Conn) -> Result<Vec<LeaseRow>, StoreError> {
        let mut stmt =
            tx.prepare("SELECT name, holder, epoch, expires_at FROM leases ORDER BY name")?;
        let rows = stmt.query_map(params![], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<i64>(2)?,
                r.get::<String>(3)?,
            ))
        })?;
        rows.into_iter()
            .map(|(name, holder, epoch, until)| {
                Ok(LeaseRow {
                    name,
                    holder,
                    epoch,
                    expires_at: parse_ts(&until)?,
                })
            })
            .collect()
    }

    /// Refuses the transaction unless `fence` still names the lease's holder and epoch: a
    /// relay that lost its lease (and may not know yet) cannot write as the singleton. Inside
    /// the caller's transaction, so a takeover racing it conflicts instead of interleaving.
    pub(in crate::store) fn check_fence(
        tx: &mut dyn Conn,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let held: Option<i64> = tx
            .query_row(
                "SELECT epoch FROM leases WHERE name = ?1 AND holder = ?2",
                params![fence.lease, fence.holder],
                |r| r.get(0),
            )
            .optional()?;
        if held == Some(fence.epoch) {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                lease: fence.lease.clone(),
                epoch: fence.epoch,
            })
        }
    }
}
