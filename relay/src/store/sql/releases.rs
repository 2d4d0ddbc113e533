//! Release tables and statements (published agent builds, see `store/releases.rs`).
//!
//! `releases` holds one row per (version, arch): size, sha256, the exact signed manifest text
//! and its signature, who published it, and the broken mark (when, why, by whom). A manifest
//! inside a stored `agent.upgrade` command is `commands.command` → `$.args.manifest.manifest`,
//! itself JSON text; `json_extract` reads its version and arch.

use super::super::releases::{NewRelease, RevertedRollback, StoredRelease};
use super::super::{Finalised, NewCommand, StoreError};
use super::{finalise_where, insert_command, parse_opt_ts, parse_ts, ts, Ending, Sql};
use super::{params, Conn, ConnExt, Optional, Row, SqlResult};
use chrono::{DateTime, Utc};
use flotilla_shared::command::{error_codes, Command, CommandResult, ResultStatus};
use flotilla_shared::release::{BrokenInfo, ReleaseInfo, ReleaseManifest, SignedManifest};

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

fn read_raw(r: &Row) -> SqlResult<RawRelease> {
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

fn load(tx: &mut dyn Conn, version: &str, arch: &str) -> Result<Option<StoredRelease>, StoreError> {
    tx.query_row(
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
    tx: &mut dyn Conn,
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

/// The build an `agent.upgrade` command names (its signed manifest's version and arch), and
/// whether the command is a rollback; None for any other command (or an unreadable manifest,
/// which the relay never signs).
fn upgrade_target(command: &Command) -> Option<(ReleaseManifest, bool)> {
    let Command::AgentUpgrade(args) = command else {
        return None;
    };
    let manifest = serde_json::from_str::<ReleaseManifest>(&args.manifest.manifest).ok()?;
    Some((manifest, args.rollback))
}

/// Why `command` must not be stored and sent: it is an `agent.upgrade` to a build that is
/// marked broken. Checked inside the write transaction that inserts the command, so it is
/// serialised with [`mark_broken`] (the store's single writer): a build marked broken after
/// the caller resolved it is still never sent.
pub(super) fn broken_upgrade(
    tx: &mut dyn Conn,
    command: &Command,
) -> Result<Option<String>, StoreError> {
    let Some((m, _)) = upgrade_target(command) else {
        return Ok(None);
    };
    let broken: Option<(String, String)> = tx
        .query_row(
            "SELECT COALESCE(broken_reason, ''), COALESCE(broken_by, '') FROM releases \
             WHERE version = ?1 AND arch = ?2 AND broken_at IS NOT NULL",
            params![m.version, m.arch],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(broken.map(|(reason, by)| {
        format!(
            "flotilla-agent {} for {} is marked broken ({reason}, by {by}); it is never sent \
             to agents",
            m.version, m.arch
        )
    }))
}

/// An `agent.upgrade` result was recorded as failed: when the agent's updater reverted the
/// upgrade (`upgrade_reverted`), the build the command named (its signed manifest's version and
/// arch) is marked broken, by the agent, with the agent's error message as the reason, and its
/// undelivered copies are ended (returned, for the caller's bookkeeping). Runs inside
/// `record_result`'s transaction, so the mark is in place before anyone can see the result.
///
/// Not for a rollback: reverting a rollback (to the previous, last known-good build) says the
/// host could not go back, not that the older build is bad, so it is not marked; the delivery
/// still ends failed with `upgrade_reverted` and the `agent_upgrade_reverted` alert still fires
/// (see [`Sql::reverted_rollbacks`]).
pub(super) fn upgrade_failed(
    tx: &mut dyn Conn,
    agent_id: &str,
    result: &CommandResult,
    now: DateTime<Utc>,
) -> Result<Vec<Finalised>, StoreError> {
    let Some(error) = result.error.as_ref().filter(|e| {
        result.status == ResultStatus::Failed && e.code == error_codes::UPGRADE_REVERTED
    }) else {
        return Ok(Vec::new());
    };
    let command: Option<String> = tx
        .query_row(
            "SELECT command FROM commands WHERE id = ?1",
            [&result.command_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(Ok(command)) = command.map(|c| serde_json::from_str::<Command>(&c)) else {
        return Ok(Vec::new());
    };
    // The relay signed this manifest itself; an unreadable one cannot name a build.
    let Some((manifest, rollback)) = upgrade_target(&command) else {
        return Ok(Vec::new());
    };
    if rollback {
        tracing::warn!(
            version = %manifest.version,
            arch = %manifest.arch,
            agent_id,
            "the agent's updater reverted a rollback; the build is not marked broken (it is an \
             older, known-good build)"
        );
        return Ok(Vec::new());
    }
    let broken = BrokenInfo {
        at: now,
        reason: error.message.clone(),
        by: agent_id.to_string(),
    };
    let ended = mark_broken(tx, &manifest.version, &manifest.arch, &broken)?.unwrap_or_default();
    tracing::warn!(
        version = %manifest.version,
        arch = %manifest.arch,
        agent_id,
        undelivered = ended.len(),
        "agent build marked broken: the agent's upgrade to it was reverted"
    );
    Ok(ended)
}

impl Sql {
    pub(in crate::store) fn insert_release(
        tx: &mut dyn Conn,
        r: &NewRelease,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
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

    /// Stores a single `agent.upgrade` command with its delivery, unless the build it names is
    /// marked broken (checked in the same transaction): then `Ok(Err(why))` and nothing is
    /// written.
    pub(in crate::store) fn create_upgrade_command(
        tx: &mut dyn Conn,
        c: &NewCommand,
    ) -> Result<Result<(), String>, StoreError> {
        if let Some(why) = broken_upgrade(tx, &c.command)? {
            return Ok(Err(why));
        }
        insert_command(tx, c)?;
        Ok(Ok(()))
    }

    /// Rollbacks (`agent.upgrade` with `rollback`) whose result arrived since `since` as failed
    /// with `upgrade_reverted`: the agent's updater could not go back either. Oldest first.
    pub(in crate::store) fn reverted_rollbacks(
        tx: &mut dyn Conn,
        since: DateTime<Utc>,
    ) -> Result<Vec<RevertedRollback>, StoreError> {
        let mut stmt = tx.prepare(
            "SELECT d.agent_id, c.command, COALESCE(json_extract(d.result, '$.error.message'), ''), \
             d.updated_at FROM commands c JOIN deliveries d ON d.command_id = c.id \
             WHERE c.kind = 'agent.upgrade' AND d.state = 'failed' AND d.updated_at >= ?1 \
             AND json_extract(d.result, '$.error.code') = ?2 \
             AND CAST(json_extract(c.command, '$.args.rollback') AS TEXT) IN ('1', 'true') \
             ORDER BY d.updated_at",
        )?;
        let rows = stmt.query_map(params![ts(since), error_codes::UPGRADE_REVERTED], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
            ))
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (agent_id, command, reason, at) in rows {
            let Some((m, _)) = serde_json::from_str::<Command>(&command)
                .ok()
                .as_ref()
                .and_then(upgrade_target)
            else {
                continue;
            };
            out.push(RevertedRollback {
                agent_id,
                version: m.version,
                arch: m.arch,
                reason,
                at: parse_ts(&at)?,
            });
        }
        Ok(out)
    }

    pub(in crate::store) fn release(
        tx: &mut dyn Conn,
        version: &str,
        arch: &str,
    ) -> Result<Option<StoredRelease>, StoreError> {
        load(tx, version, arch)
    }

    /// Every build, unordered (the caller sorts by version).
    pub(in crate::store) fn releases(tx: &mut dyn Conn) -> Result<Vec<StoredRelease>, StoreError> {
        let mut stmt = tx.prepare(&format!("SELECT {COLUMNS} FROM releases"))?;
        let rows = stmt.query_map(params![], read_raw)?;
        rows.into_iter().map(into_release).collect()
    }

    pub(in crate::store) fn mark_release_broken(
        tx: &mut dyn Conn,
        version: &str,
        arch: &str,
        broken: &BrokenInfo,
    ) -> Result<Option<(StoredRelease, Vec<Finalised>)>, StoreError> {
        let Some(ended) = mark_broken(tx, version, arch, broken)? else {
            return Ok(None);
        };
        let release = load(tx, version, arch)?
            .ok_or_else(|| StoreError::Corrupt("release vanished while marking it".into()))?;
        Ok(Some((release, ended)))
    }

    pub(in crate::store) fn unmark_release_broken(
        tx: &mut dyn Conn,
        version: &str,
        arch: &str,
    ) -> Result<Option<StoredRelease>, StoreError> {
        tx.execute(
            "UPDATE releases SET broken_at = NULL, broken_reason = NULL, broken_by = NULL \
             WHERE version = ?1 AND arch = ?2",
            params![version, arch],
        )?;
        let release = load(tx, version, arch)?;
        Ok(release)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::releases::NewRelease;
    use crate::store::{now, Finalised, NewCommand, ResultOutcome, Store};
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
            file: None,
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
        signed(
            key,
            id,
            agent,
            Command::AgentUpgrade(AgentUpgradeArgs {
                manifest: m,
                rollback: false,
            }),
        )
    }

    fn rollback(key: &SigningKey, id: &str, agent: &str, m: SignedManifest) -> NewCommand {
        signed(
            key,
            id,
            agent,
            Command::AgentUpgrade(AgentUpgradeArgs {
                manifest: m,
                rollback: true,
            }),
        )
    }

    /// `command` for one agent, queued, signed with `key`.
    fn signed(key: &SigningKey, id: &str, agent: &str, command: Command) -> NewCommand {
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
        let store = Store::open_for_test();
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
                agent_label_keys: vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()],
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
        let store = Store::open_for_test();
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
        let ResultOutcome::Recorded {
            state: DeliveryState::Failed,
            ended,
            ..
        } = outcome
        else {
            panic!("not recorded as failed: {outcome:?}");
        };
        // The copy the mark ended is handed back for its bookkeeping (waiters, metrics,
        // rollout kicks), as `mark_release_broken` does.
        assert_eq!(
            ended,
            vec![Finalised {
                command_id: "cmd_b".into(),
                agent_id: "ag_b".into(),
                job_id: None,
                state: DeliveryState::Undelivered,
                update: None,
            }]
        );
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

    fn reverted(command_id: &str) -> CommandResult {
        let t = now();
        CommandResult {
            command_id: command_id.into(),
            status: ResultStatus::Failed,
            output: None,
            error: Some(ErrorInfo {
                code: error_codes::UPGRADE_REVERTED.into(),
                message: "the agent did not come back; the previous binary was restored".into(),
            }),
            started_at: t,
            finished_at: t,
        }
    }

    #[tokio::test]
    async fn a_reverted_rollback_marks_nothing_broken_but_is_reported() {
        let store = Store::open_for_test();
        let key = SigningKey::generate();
        store
            .create_release(release(&key, "0.1.0", "x86_64"))
            .await
            .unwrap();
        let m = store
            .release("0.1.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap()
            .manifest;
        agents(&store, &["ag_a", "ag_b"]).await;
        let before = now();
        store
            .create_command(rollback(&key, "cmd_back", "ag_a", m.clone()))
            .await
            .unwrap();
        // Another agent's queued rollback to the same build.
        store
            .create_command(rollback(&key, "cmd_other", "ag_b", m.clone()))
            .await
            .unwrap();
        let outcome = store
            .record_result("ag_a".into(), reverted("cmd_back"))
            .await
            .unwrap();
        // Failed, but the older build is not broken and nothing else ended.
        assert!(
            matches!(
                &outcome,
                ResultOutcome::Recorded {
                    state: DeliveryState::Failed,
                    ended,
                    ..
                } if ended.is_empty()
            ),
            "{outcome:?}"
        );
        let r = store
            .release("0.1.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.info.broken, None);
        assert_eq!(
            store.pending_commands("ag_b".into()).await.unwrap().len(),
            1
        );
        // The alerts engine finds it (and not before its time window).
        let list = store.reverted_rollbacks(before).await.unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(
            (
                list[0].agent_id.as_str(),
                list[0].version.as_str(),
                list[0].arch.as_str()
            ),
            ("ag_a", "0.1.0", "x86_64")
        );
        assert!(list[0].reason.contains("previous binary"), "{list:?}");
        let later = now() + chrono::Duration::seconds(1);
        assert!(store.reverted_rollbacks(later).await.unwrap().is_empty());
        // A reverted upgrade (no rollback) is not in that list: it marks its build instead.
        store
            .create_command(upgrade(&key, "cmd_fwd", "ag_b", m))
            .await
            .unwrap();
        store
            .record_result("ag_b".into(), reverted("cmd_fwd"))
            .await
            .unwrap();
        assert_eq!(store.reverted_rollbacks(before).await.unwrap().len(), 1);
        assert!(store
            .release("0.1.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap()
            .info
            .broken
            .is_some());
    }

    /// An agent rollout of `version` over every agent, one at a time, its first stage started.
    async fn agent_rollout(store: &Store, id: &str, version: &str) {
        use crate::model::rollouts::RolloutSpec;
        use flotilla_shared::limit::Limit;
        use flotilla_shared::rollout::{FailureAction, RolloutOrder, RolloutTarget};
        use flotilla_shared::update::{HealthSpec, UpdateStrategy};
        let spec = RolloutSpec {
            name: format!("flotilla-agent → {version}"),
            selector: "*".parse().unwrap(),
            target: RolloutTarget::Agent,
            image: version.into(),
            stages: flotilla_shared::rollout::parse_stages("100%").unwrap(),
            order: RolloutOrder::OldestFirst,
            seed: 1,
            max_failures: Limit::Count(0),
            on_failure: FailureAction::Pause,
            parallelism: Limit::Count(1),
            health: HealthSpec::Auto,
            health_timeout_secs: None,
            stable_secs: None,
            strategy: UpdateStrategy::StopFirst,
            stage_timeout_secs: 3600,
            allow_drift: false,
        };
        store
            .create_rollout(id.into(), spec, "ops".into())
            .await
            .unwrap()
            .unwrap();
        let row = store.rollout_row(id.into()).await.unwrap().unwrap();
        store
            .start_rollout_stage(id.into(), row.progress, now())
            .await
            .unwrap();
    }

    fn agent_dispatch(command: NewCommand) -> crate::model::rollouts::ContainerDispatch {
        crate::model::rollouts::ContainerDispatch {
            name: flotilla_shared::rollout::AGENT_TARGET_NAME.into(),
            old_image: Some("0.2.0".into()),
            command: Some(command),
        }
    }

    #[tokio::test]
    async fn a_build_marked_broken_after_it_was_resolved_is_never_stored() {
        use flotilla_shared::rollout::AgentOutcome;
        let store = Store::open_for_test();
        let key = SigningKey::generate();
        store
            .create_release(release(&key, "0.3.0", "x86_64"))
            .await
            .unwrap();
        let m = store
            .release("0.3.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap()
            .manifest;
        agents(&store, &["ag_a", "ag_b"]).await;
        agent_rollout(&store, "ro_1", "0.3.0").await;
        // Both were resolved (and signed) while the build was fine...
        let single = upgrade(&key, "cmd_api", "ag_a", m.clone());
        let rolled = upgrade(&key, "cmd_ro_x", "ag_b", m.clone());
        // ... then it is marked broken before they are inserted.
        store
            .mark_release_broken(
                "0.3.0".into(),
                "x86_64".into(),
                "crashes".into(),
                "ops".into(),
            )
            .await
            .unwrap()
            .unwrap();
        let why = store
            .create_upgrade_command(single)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            why.contains("0.3.0") && why.contains("marked broken") && why.contains("crashes"),
            "{why}"
        );
        assert!(!store
            .dispatch_rollout_agent(
                "ro_1".into(),
                "ag_b".into(),
                None,
                vec![agent_dispatch(rolled)]
            )
            .await
            .unwrap());
        for (id, agent) in [("cmd_api", "ag_a"), ("cmd_ro_x", "ag_b")] {
            assert!(
                matches!(
                    store
                        .command_info(id.into(), Some(agent.into()))
                        .await
                        .unwrap(),
                    crate::store::CommandLookup::NotFound
                ),
                "{id} was stored"
            );
        }
        // The rollout's member ends skipped, with the reason and an event.
        let info = store.rollout("ro_1".into()).await.unwrap().unwrap();
        let b = info.agents.iter().find(|a| a.agent_id == "ag_b").unwrap();
        assert_eq!(b.outcome, AgentOutcome::Skipped);
        assert!(b.reason.as_deref().unwrap().contains("marked broken"));
        assert!(info.events.iter().any(|e| e.action == "skipped"));
        // Cleared, the same build is stored again.
        store
            .unmark_release_broken("0.3.0".into(), "x86_64".into())
            .await
            .unwrap();
        assert_eq!(
            store
                .create_upgrade_command(upgrade(&key, "cmd_api2", "ag_a", m))
                .await
                .unwrap(),
            Ok(())
        );
        assert_eq!(
            store.pending_commands("ag_a".into()).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn an_agent_upgrade_waits_for_container_and_backup_work() {
        use flotilla_shared::command::{BackupListArgs, ContainerStopArgs};
        use flotilla_shared::rollout::AgentOutcome;
        let store = Store::open_for_test();
        let key = SigningKey::generate();
        store
            .create_release(release(&key, "0.3.0", "x86_64"))
            .await
            .unwrap();
        let m = store
            .release("0.3.0".into(), "x86_64".into())
            .await
            .unwrap()
            .unwrap()
            .manifest;
        agents(&store, &["ag_a"]).await;
        agent_rollout(&store, "ro_1", "0.3.0").await;
        // Read-only work does not hold the upgrade back...
        store
            .create_command(signed(
                &key,
                "cmd_list",
                "ag_a",
                Command::BackupList(BackupListArgs::default()),
            ))
            .await
            .unwrap();
        assert_eq!(store.agent_busy("ag_a".into()).await.unwrap(), None);
        // ... a restart the agent accepted does.
        store
            .create_command(signed(
                &key,
                "cmd_restart",
                "ag_a",
                Command::ContainerRestart(ContainerStopArgs {
                    container: "web".into(),
                    timeout_secs: None,
                }),
            ))
            .await
            .unwrap();
        store
            .mark_received("cmd_restart".into(), "ag_a".into())
            .await
            .unwrap();
        assert_eq!(
            store.agent_busy("ag_a".into()).await.unwrap().as_deref(),
            Some("container.restart cmd_restart")
        );
        assert!(!store
            .dispatch_rollout_agent(
                "ro_1".into(),
                "ag_a".into(),
                None,
                vec![agent_dispatch(upgrade(&key, "cmd_ro_1", "ag_a", m.clone()))]
            )
            .await
            .unwrap());
        let info = store.rollout("ro_1".into()).await.unwrap().unwrap();
        assert_eq!(info.agents[0].outcome, AgentOutcome::Pending);
        assert!(matches!(
            store.command_info("cmd_ro_1".into(), None).await.unwrap(),
            crate::store::CommandLookup::NotFound
        ));
        // Once it finished, the upgrade goes out.
        let t = now();
        store
            .record_result(
                "ag_a".into(),
                CommandResult {
                    command_id: "cmd_restart".into(),
                    status: ResultStatus::Succeeded,
                    output: None,
                    error: None,
                    started_at: t,
                    finished_at: t,
                },
            )
            .await
            .unwrap();
        assert_eq!(store.agent_busy("ag_a".into()).await.unwrap(), None);
        assert!(store
            .dispatch_rollout_agent(
                "ro_1".into(),
                "ag_a".into(),
                None,
                vec![agent_dispatch(upgrade(&key, "cmd_ro_2", "ag_a", m))]
            )
            .await
            .unwrap());
        let info = store.rollout("ro_1".into()).await.unwrap().unwrap();
        assert_eq!(info.agents[0].outcome, AgentOutcome::Updating);
    }

    #[tokio::test]
    async fn latest_prefers_releases_to_pre_releases() {
        use crate::store::releases::latest_of;
        let store = Store::open_for_test();
        let key = SigningKey::generate();
        let latest = |store: Store| async move {
            latest_of(store.releases().await.unwrap(), "x86_64").map(|r| r.info.version)
        };
        // Only pre-releases for the architecture: the highest of them.
        for v in ["1.0.0-rc.1", "1.0.0-rc.2"] {
            store
                .create_release(release(&key, v, "x86_64"))
                .await
                .unwrap();
        }
        assert_eq!(latest(store.clone()).await.as_deref(), Some("1.0.0-rc.2"));
        // A release exists: it wins over any pre-release, even a higher one.
        for v in ["0.9.0", "1.1.0-beta.1"] {
            store
                .create_release(release(&key, v, "x86_64"))
                .await
                .unwrap();
        }
        assert_eq!(latest(store.clone()).await.as_deref(), Some("0.9.0"));
        // Other architectures do not count.
        store
            .create_release(release(&key, "2.0.0", "aarch64"))
            .await
            .unwrap();
        assert_eq!(latest(store.clone()).await.as_deref(), Some("0.9.0"));
        // Every release broken: no latest, rather than a pre-release by surprise.
        store
            .mark_release_broken("0.9.0".into(), "x86_64".into(), "x".into(), "ops".into())
            .await
            .unwrap();
        assert_eq!(latest(store.clone()).await, None);
    }
}
