//! Release tables and statements (published agent builds, see `store/releases.rs`).
//!
//! `releases` holds one row per (version, arch): size, sha256, the exact signed manifest text
//! and its signature, who published it, and the broken mark (when, why, by whom). A manifest
//! inside a stored `agent.upgrade` command is `commands.command` → `$.args.manifest.manifest`,
//! itself JSON text; `json_extract` reads its version and arch.

use super::super::releases::{NewRelease, StoredRelease};
use super::super::{Finalised, StoreError};
use super::{finalise_where, parse_opt_ts, parse_ts, ts, Db, Ending};
use chrono::{DateTime, Utc};
use flotilla_shared::command::{error_codes, Command, CommandResult, ResultStatus};
use flotilla_shared::release::{BrokenInfo, ReleaseInfo, ReleaseManifest, SignedManifest};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

/// Migration 7: published agent builds.
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE releases (
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL,
    signature TEXT NOT NULL,
    created_at TEXT NOT NULL,
    published_by TEXT NOT NULL,
    broken_at TEXT,
    broken_reason TEXT,
    broken_by TEXT,
    PRIMARY KEY (version, arch)
);
"#;

const COLUMNS: &str = "version, arch, size, sha256, manifest, signature, created_at, \
     published_by, broken_at, broken_reason, broken_by";

/// Longest broken reason kept (an agent's error message could be long).
const MAX_REASON_CHARS: usize = 1000;

type RawRelease = (
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn read_raw(r: &Row<'_>) -> rusqlite::Result<RawRelease> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn into_release(raw: RawRelease) -> Result<StoredRelease, StoreError> {
    let (
        version,
        arch,
        size,
        sha256,
        manifest,
        signature,
        created_at,
        published_by,
        broken_at,
        broken_reason,
        broken_by,
    ) = raw;
    let broken = parse_opt_ts(broken_at)?.map(|at| BrokenInfo {
        at,
        reason: broken_reason.unwrap_or_default(),
        by: broken_by.unwrap_or_default(),
    });
    Ok(StoredRelease {
        info: ReleaseInfo {
            version,
            arch,
            size: u64::try_from(size)
                .map_err(|_| StoreError::Corrupt(format!("bad release size {size}")))?,
            sha256,
            created_at: parse_ts(&created_at)?,
            published_by,
            broken,
        },
        manifest: SignedManifest {
            manifest,
            signature,
        },
    })
}

fn load(conn: &Connection, version: &str, arch: &str) -> Result<Option<StoredRelease>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM releases WHERE version = ?1 AND arch = ?2"),
        params![version, arch],
        read_raw,
    )
    .optional()?
    .map(into_release)
    .transpose()
}

fn cap(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((i, _)) => format!("{}…", &reason[..i]),
        None => reason.to_string(),
    }
}

/// Marks (version, arch) broken unless it already is, and ends the `agent.upgrade` deliveries of
/// that build that have not reached their agent (pending, queued, sent) as undelivered, inside
/// the caller's transaction. None when the build does not exist.
fn mark_broken(
    tx: &Transaction<'_>,
    version: &str,
    arch: &str,
    broken: &BrokenInfo,
) -> Result<Option<Vec<Finalised>>, StoreError> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM releases WHERE version = ?1 AND arch = ?2)",
        params![version, arch],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    tx.execute(
        "UPDATE releases SET broken_at = ?3, broken_reason = ?4, broken_by = ?5 \
         WHERE version = ?1 AND arch = ?2 AND broken_at IS NULL",
        params![version, arch, ts(broken.at), cap(&broken.reason), broken.by],
    )?;
    let ended = finalise_where(
        tx,
        "d.state IN ('pending','queued','sent') AND c.kind = 'agent.upgrade' \
         AND json_extract(json_extract(c.command, '$.args.manifest.manifest'), '$.version') = ?1 \
         AND json_extract(json_extract(c.command, '$.args.manifest.manifest'), '$.arch') = ?2",
        params![version, arch],
        broken.at,
        Ending::Undelivered,
    )?;
    Ok(Some(ended))
}

/// An `agent.upgrade` result was recorded as failed: when the agent's updater reverted the
/// upgrade (`upgrade_reverted`), the build the command named (its signed manifest's version and
/// arch) is marked broken, by the agent, with the agent's error message as the reason. Runs inside `record_result`'s transaction, so the
/// mark is in place before anyone can see the result.
pub(super) fn upgrade_failed(
    tx: &Transaction<'_>,
    agent_id: &str,
    result: &CommandResult,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(error) = result.error.as_ref().filter(|e| {
        result.status == ResultStatus::Failed && e.code == error_codes::UPGRADE_REVERTED
    }) else {
        return Ok(());
    };
    let command: Option<String> = tx
        .query_row(
            "SELECT command FROM commands WHERE id = ?1",
            [&result.command_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(Ok(Command::AgentUpgrade(args))) = command.map(|c| serde_json::from_str(&c)) else {
        return Ok(());
    };
    // The relay signed this manifest itself; an unreadable one cannot name a build.
    let Ok(manifest) = serde_json::from_str::<ReleaseManifest>(&args.manifest.manifest) else {
        return Ok(());
    };
    let broken = BrokenInfo {
        at: now,
        reason: error.message.clone(),
        by: agent_id.to_string(),
    };
    if let Some(ended) = mark_broken(tx, &manifest.version, &manifest.arch, &broken)? {
        tracing::warn!(
            version = %manifest.version,
            arch = %manifest.arch,
            agent_id,
            undelivered = ended.len(),
            "agent build marked broken: the agent's upgrade to it was reverted"
        );
    }
    Ok(())
}

impl Db {
    pub(in crate::store) fn insert_release(&mut self, r: &NewRelease) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO releases (version, arch, size, sha256, manifest, signature, created_at, \
             published_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (version, arch) DO NOTHING",
            params![
                r.version,
                r.arch,
                i64::try_from(r.size).unwrap_or(i64::MAX),
                r.sha256,
                r.manifest.manifest,
                r.manifest.signature,
                ts(r.created_at),
                r.published_by
            ],
        )?;
        Ok(n == 1)
    }

    pub(in crate::store) fn release(
        conn: &Connection,
        version: &str,
        arch: &str,
    ) -> Result<Option<StoredRelease>, StoreError> {
        load(conn, version, arch)
    }

    /// Every build, unordered (the caller sorts by version).
    pub(in crate::store) fn releases(conn: &Connection) -> Result<Vec<StoredRelease>, StoreError> {
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM releases"))?;
        let rows = stmt
            .query_map([], read_raw)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(into_release).collect()
    }

    pub(in crate::store) fn mark_release_broken(
        &mut self,
        version: &str,
        arch: &str,
        broken: &BrokenInfo,
    ) -> Result<Option<(StoredRelease, Vec<Finalised>)>, StoreError> {
        let tx = self.conn.transaction()?;
        let Some(ended) = mark_broken(&tx, version, arch, broken)? else {
            return Ok(None);
        };
        let release = load(&tx, version, arch)?
            .ok_or_else(|| StoreError::Corrupt("release vanished while marking it".into()))?;
        tx.commit()?;
        Ok(Some((release, ended)))
    }

    pub(in crate::store) fn unmark_release_broken(
        &mut self,
        version: &str,
        arch: &str,
    ) -> Result<Option<StoredRelease>, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE releases SET broken_at = NULL, broken_reason = NULL, broken_by = NULL \
             WHERE version = ?1 AND arch = ?2",
            params![version, arch],
        )?;
        let release = load(&tx, version, arch)?;
        tx.commit()?;
        Ok(release)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::releases::NewRelease;
    use crate::store::{now, NewCommand, ResultOutcome, Store};
    use flotilla_shared::api::DeliveryState;
    use flotilla_shared::command::{
        error_codes, AgentUpgradeArgs, Audience, Command, CommandEnvelope, CommandResult,
        ErrorInfo, ResultStatus, SignedCommand,
    };
    use flotilla_shared::release::{ReleaseManifest, SignedManifest};
    use flotilla_shared::signing::SigningKey;

    fn manifest(key: &SigningKey, version: &str, arch: &str) -> SignedManifest {
        ReleaseManifest {
            name: "flotilla-agent".into(),
            version: version.into(),
            arch: arch.into(),
            size: 3,
            sha256: "ab".repeat(32),
            created_at: now(),
        }
        .sign(key)
    }

    fn release(key: &SigningKey, version: &str, arch: &str) -> NewRelease {
        NewRelease {
            version: version.into(),
            arch: arch.into(),
            size: 3,
            sha256: "ab".repeat(32),
            manifest: manifest(key, version, arch),
            created_at: now(),
            published_by: "admin".into(),
        }
    }

    fn upgrade(key: &SigningKey, id: &str, agent: &str, m: SignedManifest) -> NewCommand {
        let command = Command::AgentUpgrade(AgentUpgradeArgs {
            manifest: m,
            rollback: false,
        });
        let issued_at = now();
        let expires_at = issued_at + chrono::Duration::minutes(10);
        let audience = Audience::Agent {
            agent_id: agent.into(),
        };
        NewCommand {
            id: id.into(),
            signed: SignedCommand::sign(
                &CommandEnvelope {
                    id: id.into(),
                    audience: audience.clone(),
                    command: command.clone(),
                    issued_at,
                    expires_at,
                },
                key,
            ),
            command,
            audience,
            created_at: issued_at,
            expires_at,
            created_by: "admin".into(),
            job_id: None,
            targets: vec![(agent.into(), DeliveryState::Queued)],
        }
    }

    #[tokio::test]
    async fn versions_list_newest_first_and_latest_skips_broken() {
        let store = Store::open_in_memory().unwrap();
        let key = SigningKey::generate();
        for (v, a) in [
            ("0.1.0", "x86_64"),
            ("0.10.0", "x86_64"),
            ("0.2.0", "x86_64"),
            ("0.2.0", "aarch64"),
        ] {
            assert!(store.create_release(release(&key, v, a)).await.unwrap());
        }
        // The same (version, arch) again writes nothing.
        assert!(!store
            .create_release(release(&key, "0.2.0", "x86_64"))
            .await
            .unwrap());
        let list: Vec<(String, String)> = store
            .releases()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.info.version, r.info.arch))
            .collect();
        assert_eq!(
            list,
            [
                ("0.10.0", "x86_64"),
                ("0.2.0", "aarch64"),
                ("0.2.0", "x86_64"),
                ("0.1.0", "x86_64")
            ]
            .map(|(v, a)| (v.to_string(), a.to_string()))
        );
        let latest = |arch: &str| {
            let store = store.clone();
            let arch = arch.to_string();
            async move {
                store
                    .latest_release(arch)
                    .await
                    .unwrap()
                    .map(|r| r.info.version)
            }
        };
        assert_eq!(latest("x86_64").await.as_deref(), Some("0.10.0"));
        let (marked, ended) = store
            .mark_release_broken(
                "0.10.0".into(),
                "x86_64".into(),
                "crash".into(),
                "ops".into(),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(ended.is_empty());
        let broken = marked.info.broken.unwrap();
        assert_eq!(
            (broken.reason.as_str(), broken.by.as_str()),
            ("crash", "ops")
        );
        assert_eq!(latest("x86_64").await.as_deref(), Some("0.2.0"));
        assert_eq!(latest("aarch64").await.as_deref(), Some("0.2.0"));
        // Marking again keeps the first mark.
        let (again, _) = store
            .mark_release_broken("0.10.0".into(), "x86_64".into(), "other".into(), "x".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.info.broken.unwrap().reason, "crash");
        assert!(store
            .mark_release_broken("9.9.9".into(), "x86_64".into(), "x".into(), "x".into())
            .await
            .unwrap()
            .is_none());
        let cleared = store
            .unmark_release_broken("0.10.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap();
        assert!(cleared.info.broken.is_none());
        assert_eq!(latest("x86_64").await.as_deref(), Some("0.10.0"));
    }

    /// Enrolls agents with these ids (deliveries reference agents).
    async fn agents(store: &Store, ids: &[&str]) {
        use crate::store::{NewAgent, NewEnrollmentToken};
        use flotilla_shared::api::AgentFacts;
        let t = now();
        store
            .create_enrollment_token(NewEnrollmentToken {
                id: "et_1".into(),
                token_hash: flotilla_shared::ids::token_hash("secret"),
                labels: Default::default(),
                created_at: t,
                expires_at: t + chrono::Duration::hours(1),
                max_uses: 100,
                note: None,
                created_by: "test".into(),
            })
            .await
            .unwrap();
        for id in ids {
            store
                .enroll(
                    flotilla_shared::ids::token_hash("secret"),
                    NewAgent {
                        id: id.to_string(),
                        name: None,
                        public_key: SigningKey::generate().public_key().to_base64(),
                        labels: Default::default(),
                        facts: AgentFacts::default(),
                    },
                )
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn reverted_upgrade_marks_its_build_broken_and_ends_undelivered_copies() {
        let store = Store::open_in_memory().unwrap();
        let key = SigningKey::generate();
        store
            .create_release(release(&key, "0.3.0", "x86_64"))
            .await
            .unwrap();
        store
            .create_release(release(&key, "0.3.0", "aarch64"))
            .await
            .unwrap();
        let m = store
            .release("0.3.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap()
            .manifest;
        let m_arm = store
            .release("0.3.0".into(), "aarch64".into())
            .await
            .unwrap()
            .unwrap()
            .manifest;
        agents(&store, &["ag_a", "ag_b", "ag_c"]).await;
        store
            .create_command(upgrade(&key, "cmd_a", "ag_a", m.clone()))
            .await
            .unwrap();
        store
            .create_command(upgrade(&key, "cmd_b", "ag_b", m.clone()))
            .await
            .unwrap();
        store
            .create_command(upgrade(&key, "cmd_c", "ag_c", m_arm))
            .await
            .unwrap();
        assert!(store
            .mark_received("cmd_a".into(), "ag_a".into())
            .await
            .unwrap());
        let t = now();
        let outcome = store
            .record_result(
                "ag_a".into(),
                CommandResult {
                    command_id: "cmd_a".into(),
                    status: ResultStatus::Failed,
                    output: None,
                    error: Some(ErrorInfo {
                        code: error_codes::UPGRADE_REVERTED.into(),
                        message: "the agent did not reach the relay within 120 s".into(),
                    }),
                    started_at: t,
                    finished_at: t,
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            ResultOutcome::Recorded {
                state: DeliveryState::Failed,
                ..
            }
        ));
        let r = store
            .release("0.3.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap();
        let broken = r.info.broken.expect("marked broken");
        assert_eq!(broken.by, "ag_a");
        assert!(broken.reason.contains("within 120 s"), "{}", broken.reason);
        // The queued copy of the same build is never sent; the other architecture's is.
        let pending_b = store.pending_commands("ag_b".into()).await.unwrap();
        assert!(pending_b.is_empty(), "{pending_b:?}");
        assert_eq!(
            store.pending_commands("ag_c".into()).await.unwrap().len(),
            1
        );
        assert!(store
            .release("0.3.0".into(), "aarch64".into())
            .await
            .unwrap()
            .unwrap()
            .info
            .broken
            .is_none());
    }
}
