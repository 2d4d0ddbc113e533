//! Off-site backups seen from a replacement server (issue 17 §3): `backup.list` with
//! `offsite` reads the manifests stored beside the dumps at the configured destinations
//! (`<agent name>/<job>/<file>.manifest.json`, under the destination's prefix), so an agent
//! with an empty catalogue sees every agent's backups there — a lost server's included — by
//! source agent, job, database and time. A restore of one downloads the dump into
//! `<backup dir>/restore/` (streamed to disk, memory bounded), after which `restore.rs`
//! checks its checksum before anything is written into a database.

use super::destination::Destination;
use super::service::DEFAULT_LIST_LIMIT;
use super::{create_dir, err, file_part, internal, Backups};
use flotilla_shared::backup::{
    BackupListArgs, BackupListOutput, BackupManifest, BackupRestoreArgs, BackupStatus,
    OffsiteBackup,
};
use flotilla_shared::command::{error_codes, ErrorInfo};
use futures_util::StreamExt;
use std::io::Read;
use std::path::{Path, PathBuf};

const MANIFEST_SUFFIX: &str = ".manifest.json";
/// A manifest is a few KiB; a larger object is not one.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Most manifests read from one destination in one listing.
const MAX_MANIFESTS: usize = 10_000;
/// Manifest downloads in flight at once.
const MANIFEST_READS_AT_ONCE: usize = 8;

/// Removes a downloaded file when dropped (every way out of a restore). The files end in
/// `.tmp`, so what a killed process leaves behind goes at the daemon's next start
/// (`Backups::prepare`).
pub(super) struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Backups {
    /// `backup.list` with `offsite`: the backups at the destinations, newest first.
    pub async fn list_offsite(&self, args: &BackupListArgs) -> Result<BackupListOutput, ErrorInfo> {
        let limit = args.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(1000) as usize;
        let (mut found, errors) = self
            .offsite_manifests(args.destination.as_deref(), args.source_agent.as_deref())
            .await?;
        found.retain(|b| {
            args.job.as_ref().is_none_or(|j| &b.manifest.job == j)
                && args
                    .database
                    .as_ref()
                    .is_none_or(|d| &b.manifest.database == d)
        });
        found.sort_by(|a, b| {
            b.manifest
                .finished_at
                .cmp(&a.manifest.finished_at)
                .then_with(|| a.source_agent.cmp(&b.source_agent))
                .then_with(|| a.location.cmp(&b.location))
        });
        let truncated = found.len() > limit;
        found.truncate(limit);
        Ok(BackupListOutput {
            backups: Vec::new(),
            truncated,
            offsite: found,
            offsite_errors: errors,
        })
    }

    /// The off-site backup a restore names: by id, among the destinations (and source agent)
    /// it allows. The same backup at two destinations is one; the same id from two agents
    /// needs `source_agent`.
    pub(super) async fn find_offsite(
        &self,
        args: &BackupRestoreArgs,
    ) -> Result<OffsiteBackup, ErrorInfo> {
        let (found, errors) = self
            .offsite_manifests(args.destination.as_deref(), args.source_agent.as_deref())
            .await?;
        let mut matching: Vec<OffsiteBackup> = found
            .into_iter()
            .filter(|b| b.manifest.id == args.id)
            .collect();
        let mut agents: Vec<&str> = matching.iter().map(|b| b.source_agent.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        match agents.len() {
            0 => {
                let why = if errors.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (not every destination could be read: {})",
                        errors.join("; ")
                    )
                };
                Err(err(
                    error_codes::NO_SUCH_BACKUP,
                    format!(
                        "no backup {:?} at the off-site destinations (see backup.list \
                         --offsite){why}",
                        args.id
                    ),
                ))
            }
            1 => {
                // Prefer a successful copy; destinations keep their configured order.
                matching.sort_by_key(|b| b.manifest.status != BackupStatus::Success);
                Ok(matching.swap_remove(0))
            }
            _ => Err(err(
                error_codes::INVALID_ARGS,
                format!(
                    "backup {:?} exists for several agents ({}); name the one with source_agent",
                    args.id,
                    agents.join(", ")
                ),
            )),
        }
    }

    /// Downloads an off-site dump to `<dir>/restore/`; the caller checks its checksum and
    /// removes it.
    pub(super) async fn download_offsite(
        &self,
        b: &OffsiteBackup,
    ) -> Result<RemoveOnDrop, ErrorInfo> {
        let failed = |m: String| err(error_codes::RESTORE_FAILED, m);
        let d = self.destination_named(&b.destination)?;
        let dir = self.inner.dir.join("restore");
        let d2 = dir.clone();
        tokio::task::spawn_blocking(move || create_dir(&d2))
            .await
            .map_err(|e| internal(e.into()))?
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let local = RemoveOnDrop(dir.join(format!(
            "{}-{}.download.tmp",
            file_part(&b.source_agent),
            file_part(&b.manifest.id)
        )));
        let started = std::time::Instant::now();
        let bytes = d
            .download(&b.location, &local.0)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(
            id = b.manifest.id,
            destination = b.destination,
            source_agent = b.source_agent,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "off-site backup downloaded for a restore"
        );
        Ok(local)
    }

    fn destination_named(&self, name: &str) -> Result<&Destination, ErrorInfo> {
        self.inner
            .destinations
            .iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                err(
                    error_codes::INVALID_ARGS,
                    format!(
                        "no destination named {name:?} in [[backup.destinations]] of this \
                         agent's agent.toml"
                    ),
                )
            })
    }

    /// Every manifest at the allowed destinations, with what could not be read.
    async fn offsite_manifests(
        &self,
        destination: Option<&str>,
        source_agent: Option<&str>,
    ) -> Result<(Vec<OffsiteBackup>, Vec<String>), ErrorInfo> {
        let invalid = |m: String| err(error_codes::INVALID_ARGS, m);
        if let Some(a) = source_agent {
            if a.is_empty() || a.contains(['/', '\\']) || a == "." || a == ".." {
                return Err(invalid(format!("source_agent {a:?} is not an agent name")));
            }
        }
        let destinations: Vec<&Destination> = match destination {
            Some(name) => vec![self.destination_named(name)?],
            None => self.inner.destinations.iter().collect(),
        };
        if destinations.is_empty() {
            return Err(invalid(
                "no off-site destination is configured: give this agent the lost server's \
                 [[backup.destinations]] (same bucket or directory, prefix and credentials) in \
                 agent.toml"
                    .into(),
            ));
        }
        let tmp = self.inner.dir.join("restore");
        let t = tmp.clone();
        tokio::task::spawn_blocking(move || create_dir(&t))
            .await
            .map_err(|e| internal(e.into()))?
            .map_err(|e| internal(anyhow::anyhow!("cannot create {}: {e}", tmp.display())))?;
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for d in destinations {
            let objects = match d.list(source_agent.unwrap_or("")).await {
                Ok(o) => o,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let manifests: Vec<_> = objects
                .into_iter()
                .filter(|o| o.location.ends_with(MANIFEST_SUFFIX))
                .collect();
            if manifests.len() > MAX_MANIFESTS {
                errors.push(format!(
                    "destination {}: {} manifests, only the first {MAX_MANIFESTS} read",
                    d.name(),
                    manifests.len()
                ));
            }
            let mut wanted = Vec::new();
            for o in manifests.into_iter().take(MAX_MANIFESTS) {
                let Some(key) = d.key_of(&o.location) else {
                    continue;
                };
                if o.size > MAX_MANIFEST_BYTES {
                    errors.push(format!(
                        "destination {}: {key} is {} bytes, not a manifest",
                        d.name(),
                        o.size
                    ));
                    continue;
                }
                wanted.push((key, o.location));
            }
            // A few at a time: one request each, so a long history lists in seconds.
            let tmp = &tmp;
            let mut reads =
                futures_util::stream::iter(wanted.into_iter().map(|(key, location)| async move {
                    let manifest = read_manifest(d, &location, tmp).await;
                    (key, location, manifest)
                }))
                .buffered(MANIFEST_READS_AT_ONCE);
            while let Some((key, location, manifest)) = reads.next().await {
                match manifest {
                    Ok(manifest) => found.push(OffsiteBackup {
                        destination: d.name().to_string(),
                        source_agent: key.split('/').next().unwrap_or_default().to_string(),
                        location: location
                            .strip_suffix(MANIFEST_SUFFIX)
                            .unwrap_or(&location)
                            .to_string(),
                        manifest,
                    }),
                    Err(e) => errors.push(format!("destination {}: {key}: {e}", d.name())),
                }
            }
        }
        Ok((found, errors))
    }
}

/// Downloads one manifest into `tmp`, parses it and removes the copy.
async fn read_manifest(
    d: &Destination,
    location: &str,
    tmp: &Path,
) -> Result<BackupManifest, String> {
    let local = RemoveOnDrop(tmp.join(format!(
        "manifest-{:016x}.json.tmp",
        flotilla_shared::ids::random_u64()
    )));
    d.download(location, &local.0)
        .await
        .map_err(|e| e.to_string())?;
    let path = local.0.clone();
    tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_MANIFEST_BYTES).read_to_end(&mut text))
            .map_err(|e| format!("cannot read the downloaded manifest: {e}"))?;
        serde_json::from_slice::<BackupManifest>(&text)
            .map_err(|e| format!("not a backup manifest: {e}"))
    })
    .await
    .map_err(|e| format!("manifest task failed: {e}"))?
}
