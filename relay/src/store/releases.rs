//! Published agent builds: domain methods of [`Store`] for releases (SQL in
//! `sql/releases.rs`, the files and signing in `crate::releases`). One row per (version,
//! arch) with the exact signed manifest text and its signature, who published it, and whether
//! it is marked broken. Marking a build broken also ends, in the same transaction, every
//! `agent.upgrade` delivery of it that has not reached its agent yet (pending, queued or sent):
//! a broken build is never sent again; and every write transaction that inserts an
//! `agent.upgrade` (single commands, rollout dispatch and reverts) checks the mark again, so a
//! build marked broken after it was resolved is not sent either. An agent's `upgrade_reverted`
//! result marks its build broken inside the transaction that records the result
//! (`Db::record_result`), except for a rollback: going back to the previous build failed, which
//! does not make that older, known-good build broken (the failure and the alert remain).

use super::{now, Finalised, NewCommand, Sql, Store, StoreError};
use chrono::{DateTime, Utc};
use flotilla_shared::release::{
    compare_versions, is_prerelease, BrokenInfo, ReleaseInfo, SignedManifest,
};
use std::path::PathBuf;

/// A published build as stored: what the API lists, plus the signed manifest sent to agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRelease {
    pub info: ReleaseInfo,
    pub manifest: SignedManifest,
}

/// A build to record (its file is already in place).
#[derive(Clone, Debug)]
pub struct NewRelease {
    /// The verified file whose bytes are stored with the record (in the same transaction), so
    /// every relay on the database can serve the build. None only in tests of the records.
    pub file: Option<PathBuf>,
    pub version: String,
    pub arch: String,
    pub size: u64,
    pub sha256: String,
    pub manifest: SignedManifest,
    pub created_at: DateTime<Utc>,
    pub published_by: String,
}

pub use crate::model::alerts::rules::RevertedRollback;

/// Newest version first (semantic-version order), then by architecture.
pub fn sort_newest_first(list: &mut [StoredRelease]) {
    list.sort_by(|a, b| {
        compare_versions(&b.info.version, &a.info.version)
            .then_with(|| a.info.arch.cmp(&b.info.arch))
    });
}

/// `latest` for `arch` among `list` (sorted newest first): the highest release (no
/// pre-release part) that is not marked broken. Pre-releases (`1.3.0-rc.1`) are only considered
/// when no release at all is published for the architecture, so a release candidate never
/// reaches a fleet by `latest` once a release exists, not even when every release is broken
/// (then there is no `latest`).
pub fn latest_of(list: Vec<StoredRelease>, arch: &str) -> Option<StoredRelease> {
    let builds: Vec<StoredRelease> = list.into_iter().filter(|r| r.info.arch == arch).collect();
    let any_release = builds.iter().any(|r| !is_prerelease(&r.info.version));
    builds
        .into_iter()
        .filter(|r| r.info.broken.is_none())
        .find(|r| !any_release || !is_prerelease(&r.info.version))
}

impl Store {
    /// Records a published build with its bytes (read from `release.file`); false (nothing
    /// written) when (version, arch) exists.
    pub async fn create_release(&self, release: NewRelease) -> Result<bool, StoreError> {
        self.write(move |c| {
            let created = Sql::insert_release(c, &release)?;
            if let (true, Some(file)) = (created, &release.file) {
                let expected = (release.size, release.sha256.as_str());
                Sql::put_release_chunks(c, &release.version, &release.arch, file, expected)?;
            }
            Ok(created)
        })
        .await
    }

    /// Stores the bytes of an already recorded build from `file` (replacing any stored) when
    /// they are the build's (its size and SHA-256, else an error and nothing changes); the
    /// number of bytes stored, None when no such build is recorded.
    pub async fn store_release_bytes(
        &self,
        version: String,
        arch: String,
        file: PathBuf,
    ) -> Result<Option<u64>, StoreError> {
        self.write(move |c| {
            let Some(release) = Sql::release(c, &version, &arch)? else {
                return Ok(None);
            };
            let expected = (release.info.size, release.info.sha256.as_str());
            Sql::put_release_chunks(c, &version, &arch, &file, expected).map(Some)
        })
        .await
    }

    /// Piece `seq` of a build's stored bytes (`sql::releasefiles::CHUNK_BYTES` each, the last one shorter);
    /// None past the end, or when the build's bytes are not stored.
    pub async fn release_chunk(
        &self,
        version: String,
        arch: String,
        seq: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| Sql::release_chunk(c, &version, &arch, seq))
            .await
    }

    /// Recorded builds whose bytes are not stored (published before the database kept them),
    /// as (version, arch).
    pub async fn releases_without_bytes(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(Sql::releases_without_chunks).await
    }

    /// One build.
    pub async fn release(
        &self,
        version: String,
        arch: String,
    ) -> Result<Option<StoredRelease>, StoreError> {
        self.read(move |c| Sql::release(c, &version, &arch)).await
    }

    /// Every build, newest version first.
    pub async fn releases(&self) -> Result<Vec<StoredRelease>, StoreError> {
        let mut list = self.read(Sql::releases).await?;
        sort_newest_first(&mut list);
        Ok(list)
    }

    /// What `latest` is for `arch`: see [`latest_of`].
    pub async fn latest_release(&self, arch: String) -> Result<Option<StoredRelease>, StoreError> {
        let list = self.releases().await?;
        Ok(latest_of(list, &arch))
    }

    /// Marks a build broken (kept as it is when it already was) and ends its undelivered
    /// `agent.upgrade` deliveries; None when no such build exists.
    pub async fn mark_release_broken(
        &self,
        version: String,
        arch: String,
        reason: String,
        by: String,
    ) -> Result<Option<(StoredRelease, Vec<Finalised>)>, StoreError> {
        self.write(move |c| {
            let broken = BrokenInfo {
                at: now(),
                reason: reason.clone(),
                by: by.clone(),
            };
            Sql::mark_release_broken(c, &version, &arch, &broken)
        })
        .await
    }

    /// Stores a single `agent.upgrade` command (one agent) unless, inside the same write
    /// transaction, the build it names turns out to be marked broken: then `Ok(Err(why))`.
    pub async fn create_upgrade_command(
        &self,
        command: NewCommand,
    ) -> Result<Result<(), String>, StoreError> {
        self.write(move |c| Sql::create_upgrade_command(c, &command))
            .await
    }

    /// Rollbacks whose result came back `upgrade_reverted` since `since`, oldest first.
    pub async fn reverted_rollbacks(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<RevertedRollback>, StoreError> {
        self.read(move |c| Sql::reverted_rollbacks(c, since)).await
    }

    /// Clears a build's broken mark; None when no such build exists.
    pub async fn unmark_release_broken(
        &self,
        version: String,
        arch: String,
    ) -> Result<Option<StoredRelease>, StoreError> {
        self.write(move |c| Sql::unmark_release_broken(c, &version, &arch))
            .await
    }
}
