//! Published agent builds: domain methods of [`Store`] for releases (SQL in
//! `sqlite/releases.rs`, the files and signing in `crate::releases`). One row per (version,
//! arch) with the exact signed manifest text and its signature, who published it, and whether
//! it is marked broken. Marking a build broken also ends, in the same transaction, every
//! `agent.upgrade` delivery of it that has not reached its agent yet (pending, queued or sent):
//! a broken build is never sent again. An agent's `upgrade_reverted` result marks its build
//! broken inside the transaction that records the result (`Db::record_result`).

use super::{now, sqlite, Finalised, Store, StoreError};
use chrono::{DateTime, Utc};
use flotilla_shared::release::{compare_versions, BrokenInfo, ReleaseInfo, SignedManifest};

/// A published build as stored: what the API lists, plus the signed manifest sent to agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRelease {
    pub info: ReleaseInfo,
    pub manifest: SignedManifest,
}

/// A build to record (its file is already in place).
#[derive(Clone, Debug)]
pub struct NewRelease {
    pub version: String,
    pub arch: String,
    pub size: u64,
    pub sha256: String,
    pub manifest: SignedManifest,
    pub created_at: DateTime<Utc>,
    pub published_by: String,
}

/// Newest version first (semantic-version order), then by architecture.
pub fn sort_newest_first(list: &mut [StoredRelease]) {
    list.sort_by(|a, b| {
        compare_versions(&b.info.version, &a.info.version)
            .then_with(|| a.info.arch.cmp(&b.info.arch))
    });
}

impl Store {
    /// Records a published build; false (nothing written) when (version, arch) exists.
    pub async fn create_release(&self, release: NewRelease) -> Result<bool, StoreError> {
        self.call(move |db| db.insert_release(&release)).await
    }

    /// One build.
    pub async fn release(
        &self,
        version: String,
        arch: String,
    ) -> Result<Option<StoredRelease>, StoreError> {
        self.read(move |c| sqlite::Db::release(c, &version, &arch))
            .await
    }

    /// Every build, newest version first.
    pub async fn releases(&self) -> Result<Vec<StoredRelease>, StoreError> {
        let mut list = self.read(sqlite::Db::releases).await?;
        sort_newest_first(&mut list);
        Ok(list)
    }

    /// The highest version published for `arch` that is not marked broken.
    pub async fn latest_release(&self, arch: String) -> Result<Option<StoredRelease>, StoreError> {
        let list = self.releases().await?;
        Ok(list
            .into_iter()
            .find(|r| r.info.arch == arch && r.info.broken.is_none()))
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
        self.call(move |db| {
            let broken = BrokenInfo {
                at: now(),
                reason,
                by,
            };
            db.mark_release_broken(&version, &arch, &broken)
        })
        .await
    }

    /// Clears a build's broken mark; None when no such build exists.
    pub async fn unmark_release_broken(
        &self,
        version: String,
        arch: String,
    ) -> Result<Option<StoredRelease>, StoreError> {
        self.call(move |db| db.unmark_release_broken(&version, &arch))
            .await
    }
}
