//! The identity (`identity`: agent id, private key, pinned relay key, as stored at enrollment)
//! with its mirror for the root updater, `<state_dir>/agent-id` (see `agent_id`), and the last
//! verified welcome (`welcome`), whose labels serve until the relay sends a fresh one.

use super::{parse_ts, ts, State};
use crate::agent_id::{ensure_agent_id, write_agent_id};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::protocol::SignedWelcome;
use rusqlite::{params, OptionalExtension};
use std::path::Path;

/// Who this agent is, as stored at enrollment.
#[derive(Clone)]
pub struct Identity {
    pub agent_id: String,
    pub name: String,
    /// The agent's Ed25519 private key (PKCS#8). Never logged.
    pub pkcs8: Vec<u8>,
    /// The relay's public key (base64), pinned at enrollment.
    pub relay_public_key: String,
    pub relay_url: String,
    pub enrolled_at: DateTime<Utc>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

// === impl State ===

impl State {
    pub async fn identity(&self) -> Result<Option<Identity>> {
        self.call(|c| {
            c.query_row(
                "SELECT agent_id, name, pkcs8, relay_public_key, relay_url, enrolled_at
                 FROM identity WHERE id = 1",
                [],
                |r| {
                    Ok(Identity {
                        agent_id: r.get(0)?,
                        name: r.get(1)?,
                        pkcs8: r.get(2)?,
                        relay_public_key: r.get(3)?,
                        relay_url: r.get(4)?,
                        enrolled_at: parse_ts(&r.get::<_, String>(5)?),
                    })
                },
            )
            .optional()
            .context("cannot read identity")
        })
        .await
    }

    /// Stores the identity and writes its id to `<state_dir>/agent-id` (for the root updater;
    /// see `agent_id`); refuses to replace an existing identity. The file is written before the
    /// row is committed, so a stored identity always has it; a file left by a failed commit is
    /// rewritten by the next enrollment or start.
    pub async fn save_identity(&self, identity: Identity) -> Result<()> {
        let path = self.path.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            let existing: Option<String> = tx
                .query_row("SELECT agent_id FROM identity WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(id) = existing {
                bail!(
                    "{} already holds the identity of agent {id}; refusing to overwrite it",
                    path.display()
                );
            }
            tx.execute(
                "INSERT INTO identity (id, agent_id, name, pkcs8, relay_public_key, relay_url,
                 enrolled_at) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    identity.agent_id,
                    identity.name,
                    identity.pkcs8,
                    identity.relay_public_key,
                    identity.relay_url,
                    ts(identity.enrolled_at)
                ],
            )?;
            tx.commit()?;
            // After the commit: the relay has already spent the enrollment token, so a failure
            // here must not lose the identity. The next start writes the file again
            // (`ensure_agent_id_file`); only a rollback needs it before then.
            let dir = state_dir_of(&path);
            if let Err(e) = write_agent_id(dir, &identity.agent_id) {
                tracing::warn!(
                    "cannot write {}: {e}; the next start writes it again",
                    crate::agent_id::agent_id_path(dir).display()
                );
            }
            Ok(())
        })
        .await
    }

    /// Rewrites `<state_dir>/agent-id` when it is missing or holds another id than `agent_id`
    /// (an install enrolled before the file existed); returns whether it wrote.
    pub async fn ensure_agent_id_file(&self, agent_id: &str) -> Result<bool> {
        let (path, id) = (self.path.clone(), agent_id.to_string());
        tokio::task::spawn_blocking(move || {
            let dir = state_dir_of(&path);
            ensure_agent_id(dir, &id).with_context(|| {
                format!(
                    "cannot write {}",
                    crate::agent_id::agent_id_path(dir).display()
                )
            })
        })
        .await
        .context("agent id file task failed")?
    }

    pub async fn save_welcome(&self, welcome: SignedWelcome) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO welcome (id, body, signature, received_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body,
                 signature = excluded.signature, received_at = excluded.received_at",
                params![welcome.body, welcome.signature, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn last_welcome(&self) -> Result<Option<SignedWelcome>> {
        self.call(|c| {
            c.query_row(
                "SELECT body, signature FROM welcome WHERE id = 1",
                [],
                |r| {
                    Ok(SignedWelcome {
                        body: r.get(0)?,
                        signature: r.get(1)?,
                    })
                },
            )
            .optional()
            .context("cannot read last welcome")
        })
        .await
    }
}

/// The state directory holding the database file `db`.
fn state_dir_of(db: &Path) -> &Path {
    db.parent().unwrap_or(Path::new("."))
}
