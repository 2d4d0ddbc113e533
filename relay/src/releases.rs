//! Agent releases on the relay: publishing a build (streamed to a temporary file under
//! `<data_dir>/releases/`, hashed while it is written, capped at [`MAX_RELEASE_BYTES`], fsynced
//! and renamed into `<data_dir>/releases/<version>/<arch>/flotilla-agent`, its bytes stored in
//! the database in the transaction that records it, so every relay on a shared database serves
//! it: `files.rs` fills a relay's missing file from them), the manifest the relay signs for it
//! with its key, resolving `latest`, marking builds broken, the
//! `agent.upgrade` command for one agent, and the files the installer downloads (`install.sh`
//! with the relay's address and key filled in, the systemd units).
//!
//! A build is immutable once published: publishing the same bytes again answers with the
//! existing build (and rewrites its file from the verified upload, repairing a missing or
//! damaged one), different bytes for the same (version, arch) are refused, and so is a version
//! that differs from a published one only in build metadata (`1.0.0+a` / `1.0.0+b`: the same
//! version to agents). A build marked broken (by an operator, or by the relay when an agent's
//! updater reverted an upgrade to it, unless that upgrade was a rollback) is never sent to an
//! agent again and is not served for download; `latest` skips it and prefers releases to
//! pre-releases.

use crate::commands::Commands;
use crate::hub::Hub;
use crate::store::releases::{NewRelease, StoredRelease};
use crate::store::Store;
use crate::store::{Finalised, StoreError};
use axum::body::Bytes;
use flotilla_shared::command::{AgentUpgradeArgs, Command};
use flotilla_shared::release::{
    canonical_arch, compare_versions, elf_arch, normalize_arch, validate_version, InvalidVersion,
    ReleaseInfo, ReleaseManifest, UnknownArch, UpgradeRequest, ARCHES, ELF_HEAD, LATEST,
    MAX_RELEASE_BYTES,
};
use futures_util::{Stream, StreamExt};

use flotilla_shared::signing::SigningKey;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

mod files;
pub use files::{backfill, materialise, MaterialiseError};

/// The installer, served at `/install.sh` with its placeholders filled in.
pub const INSTALL_SH: &str = include_str!("../../install.sh");
/// Placeholders of [`INSTALL_SH`] the relay fills in.
pub const PLACEHOLDER_URL: &str = "@@RELAY_URL@@";
pub const PLACEHOLDER_FINGERPRINT: &str = "@@RELAY_FINGERPRINT@@";
pub const PLACEHOLDER_PUBLIC_KEY: &str = "@@RELAY_PUBLIC_KEY@@";

/// The systemd units the installer installs, served at `/download/systemd/<name>`.
pub const UNITS: [(&str, &str); 3] = [
    (
        "flotilla-agent.service",
        include_str!("../../packaging/systemd/flotilla-agent.service"),
    ),
    (
        "flotilla-agent-updater.service",
        include_str!("../../packaging/systemd/flotilla-agent-updater.service"),
    ),
    (
        "flotilla-agent-updater.path",
        include_str!("../../packaging/systemd/flotilla-agent-updater.path"),
    ),
];

/// Directory under the data directory that holds published builds.
pub const RELEASES_DIR: &str = "releases";
/// File name of a build inside `<version>/<arch>/`.
pub const BINARY_NAME: &str = "flotilla-agent";

/// Where the build of (version, arch) lives.
pub fn binary_path(data_dir: &Path, version: &str, arch: &str) -> PathBuf {
    data_dir
        .join(RELEASES_DIR)
        .join(version)
        .join(arch)
        .join(BINARY_NAME)
}

/// Publishing one build serialises on this lock: checking for an existing build, renaming the
/// file into place and recording it must not interleave with another publish of the same build.
static PUBLISH_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid version: {0}")]
    InvalidVersion(InvalidVersion),
    #[error("{0}")]
    InvalidArch(UnknownArch),
    #[error(
        "the build is larger than {MAX_RELEASE_BYTES} bytes (64 MiB), the most a release may be"
    )]
    TooLarge,
    #[error("the upload is empty: send the agent binary as the request body")]
    Empty,
    #[error("the upload is not a build for {arch}: {why}")]
    NotABuild { arch: String, why: String },
    #[error(
        "flotilla-agent {version} for {arch} is already published with different bytes (sha256 \
         {existing}, this upload {uploaded}); a published build never changes: publish it as a \
         new version"
    )]
    Conflict {
        version: String,
        arch: String,
        existing: String,
        uploaded: String,
    },
    #[error(
        "flotilla-agent {existing} for {arch} is already published, and {version} differs from it \
         only in build metadata (after '+'), which does not order versions: agents would take \
         one for the other. Publish it as a new version"
    )]
    SamePrecedence {
        version: String,
        arch: String,
        existing: String,
    },
    /// Another relay published (or removed) the same build meanwhile.
    #[error("flotilla-agent {version} for {arch} was published by someone else meanwhile")]
    Concurrent { version: String, arch: String },
    #[error("the upload was cut short: {0}")]
    Body(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// A new build.
    Created(ReleaseInfo),
    /// The same bytes were already published as this build.
    Existing(ReleaseInfo),
}

/// A temporary file that is removed unless it was renamed into place. Removal is awaited on
/// every path [`publish`] returns through ([`TempFile::discard`]); the `Drop` fallback only
/// runs when the upload's future is dropped midway (the client went away), and then removes the
/// file on a blocking thread, never on the async worker.
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl TempFile {
    /// The file was renamed into place: nothing to remove.
    fn kept(&mut self) {
        self.done = true;
    }

    async fn discard(&mut self) {
        if !self.done {
            self.done = true;
            let _ = tokio::fs::remove_file(&self.path).await;
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || std::fs::remove_file(path));
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Publishes a build from `body` (the raw binary, streamed): see the module doc.
pub async fn publish<S, E>(
    releases: &Releases,
    version: &str,
    arch: &str,
    body: S,
    published_by: &str,
) -> Result<Published, PublishError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    validate_version(version).map_err(PublishError::InvalidVersion)?;
    let arch = canonical_arch(arch).map_err(PublishError::InvalidArch)?;
    let final_path = binary_path(&releases.data_dir, version, arch);
    let dir = final_path
        .parent()
        .expect("a build path has a directory")
        .to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(io_err(&dir))?;
    let mut tag = [0u8; 8];
    flotilla_shared::ids::random_bytes(&mut tag);
    let temp_path = dir.join(format!(".{BINARY_NAME}.{}.partial", hex::encode(tag)));
    let mut temp = TempFile {
        path: temp_path.clone(),
        done: false,
    };
    let result = publish_from_temp(
        releases,
        version,
        arch,
        body,
        published_by,
        &mut temp,
        &final_path,
    )
    .await;
    temp.discard().await;
    result
}

/// Reads and discards what is left of a rejected upload, up to the size cap, so the client (or
/// the reverse proxy in front) gets the relay's error instead of a reset connection.
async fn drain_body<S, E>(body: &mut S, mut size: u64)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    while let Some(Ok(chunk)) = body.next().await {
        size += chunk.len() as u64;
        if size > MAX_RELEASE_BYTES {
            break;
        }
    }
}

/// The body of [`publish`] once the temporary file's name is chosen.
async fn publish_from_temp<S, E>(
    releases: &Releases,
    version: &str,
    arch: &'static str,
    mut body: S,
    published_by: &str,
    temp: &mut TempFile,
    final_path: &Path,
) -> Result<Published, PublishError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let temp_path = temp.path.clone();
    let dir = final_path
        .parent()
        .expect("a build path has a directory")
        .to_path_buf();
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp_path)
        .await
        .map_err(io_err(&temp_path))?;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size: u64 = 0;
    let mut head: Vec<u8> = Vec::with_capacity(ELF_HEAD);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| PublishError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > MAX_RELEASE_BYTES {
            return Err(PublishError::TooLarge);
        }
        if head.len() < ELF_HEAD {
            let take = (ELF_HEAD - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() == ELF_HEAD {
                if let Err(e) = check_build(&head, arch) {
                    // Read (and drop) the rest first: a proxy that is still sending the body
                    // when the relay answers and closes reports 502 instead of this error.
                    drain_body(&mut body, size).await;
                    return Err(e);
                }
            }
        }
        sha.update(&chunk);
        file.write_all(&chunk).await.map_err(io_err(&temp_path))?;
    }
    if size == 0 {
        return Err(PublishError::Empty);
    }
    if head.len() < ELF_HEAD {
        check_build(&head, arch)?;
    }
    file.sync_all().await.map_err(io_err(&temp_path))?;
    drop(file);
    let sha256 = hex::encode(sha.finish().as_ref());

    let _guard = PUBLISH_LOCK.lock().await;
    if let Some(existing) = releases
        .store
        .release(version.to_string(), arch.to_string())
        .await?
    {
        if existing.info.sha256 != sha256 || existing.info.size != size {
            return Err(PublishError::Conflict {
                version: version.to_string(),
                arch: arch.to_string(),
                existing: existing.info.sha256,
                uploaded: sha256,
            });
        }
        // Same bytes (they hash as signed): always put this verified copy in place, which
        // repairs a file that went missing or was damaged, even one of the same length.
        install(&temp_path, final_path, &dir).await?;
        temp.kept();
        files::store_bytes(&releases.store, version, arch, final_path).await?;
        tracing::info!(
            version,
            arch,
            "the same build was published again; its file was rewritten from the upload"
        );
        return Ok(Published::Existing(existing.info));
    }
    // Build metadata does not order versions: 1.0.0+a and 1.0.0+b would be the same version to
    // agents (each refuses the other as "already running"), and `latest` could not choose.
    if let Some(twin) = releases
        .store
        .releases()
        .await?
        .into_iter()
        .find(|r| r.info.arch == arch && compare_versions(&r.info.version, version).is_eq())
    {
        return Err(PublishError::SamePrecedence {
            version: version.to_string(),
            arch: arch.to_string(),
            existing: twin.info.version,
        });
    }
    install(&temp_path, final_path, &dir).await?;
    temp.kept();
    let created_at = crate::store::now();
    let manifest = ReleaseManifest {
        name: BINARY_NAME.to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
        size,
        sha256: sha256.clone(),
        created_at,
    }
    .sign(&releases.key);
    let created = releases
        .store
        .create_release(NewRelease {
            file: Some(final_path.to_path_buf()),
            version: version.to_string(),
            arch: arch.to_string(),
            size,
            sha256: sha256.clone(),
            manifest,
            created_at,
            published_by: published_by.to_string(),
        })
        .await?;
    if !created {
        // Another relay on the same database published this build meanwhile (the lock above
        // is this process's only): the same bytes are that build, others a conflict.
        return match releases
            .store
            .release(version.to_string(), arch.to_string())
            .await?
        {
            Some(existing) if existing.info.sha256 == sha256 && existing.info.size == size => {
                files::store_bytes(&releases.store, version, arch, final_path).await?;
                Ok(Published::Existing(existing.info))
            }
            Some(existing) => {
                // This upload's bytes are not the build: the file goes, and the next download
                // writes the build's from the database.
                let _ = tokio::fs::remove_file(final_path).await;
                Err(PublishError::Conflict {
                    version: version.to_string(),
                    arch: arch.to_string(),
                    existing: existing.info.sha256,
                    uploaded: sha256,
                })
            }
            None => Err(PublishError::Concurrent {
                version: version.to_string(),
                arch: arch.to_string(),
            }),
        };
    }
    tracing::info!(version, arch, size, %sha256, published_by, "agent build published");
    Ok(Published::Created(ReleaseInfo {
        version: version.to_string(),
        arch: arch.to_string(),
        size,
        sha256,
        created_at,
        published_by: published_by.to_string(),
        broken: None,
    }))
}

/// A build must be an ELF executable for the architecture it is published as (agents would
/// refuse it anyway, after downloading it, as their smoke test fails).
fn check_build(head: &[u8], arch: &str) -> Result<(), PublishError> {
    match elf_arch(head) {
        Ok(a) if a == arch => Ok(()),
        Ok(a) => Err(PublishError::NotABuild {
            arch: arch.to_string(),
            why: format!("it is an ELF executable for {a}"),
        }),
        Err(why) => Err(PublishError::NotABuild {
            arch: arch.to_string(),
            why: why.into(),
        }),
    }
}

/// Renames the fsynced temporary file over the build's path and fsyncs the directory.
async fn install(temp: &Path, target: &Path, dir: &Path) -> Result<(), PublishError> {
    tokio::fs::rename(temp, target)
        .await
        .map_err(io_err(target))?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(io_err(target))
}

/// Why a build could not be resolved for download or for an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    UnknownArch(UnknownArch),
    #[error("invalid version: {0}")]
    InvalidVersion(InvalidVersion),
    #[error("no build of flotilla-agent {version} for {arch}; {available}")]
    NotFound {
        version: String,
        arch: String,
        available: String,
    },
    #[error(
        "flotilla-agent {} for {} is marked broken ({}, by {}); it is never sent to agents",
        .0.info.version, .0.info.arch, broken_reason(.0), broken_by(.0)
    )]
    Broken(Box<StoredRelease>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn broken_reason(r: &StoredRelease) -> &str {
    r.info
        .broken
        .as_ref()
        .map(|b| b.reason.as_str())
        .unwrap_or("")
}

fn broken_by(r: &StoredRelease) -> &str {
    r.info.broken.as_ref().map(|b| b.by.as_str()).unwrap_or("")
}

/// What is published, for "not found" messages: `published: 0.2.0 (x86_64, aarch64), 0.1.0
/// (x86_64)`.
pub fn available(list: &[StoredRelease]) -> String {
    if list.is_empty() {
        return "no agent builds are published on this relay".into();
    }
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in list {
        let arch = if r.info.broken.is_some() {
            format!("{} broken", r.info.arch)
        } else {
            r.info.arch.clone()
        };
        match groups.last_mut() {
            Some((v, arches)) if *v == r.info.version => arches.push(arch),
            _ => groups.push((r.info.version.clone(), vec![arch])),
        }
    }
    let text: Vec<String> = groups
        .into_iter()
        .map(|(v, a)| format!("{v} ({})", a.join(", ")))
        .collect();
    format!("published: {}", text.join(", "))
}

/// The build `version` (or [`LATEST`]) names for `arch` (any accepted spelling), unless it is
/// missing or broken.
pub async fn resolve(
    store: &Store,
    version: &str,
    arch: &str,
) -> Result<StoredRelease, ResolveError> {
    let arch = canonical_arch(arch).map_err(ResolveError::UnknownArch)?;
    let found = if version == LATEST {
        store.latest_release(arch.to_string()).await?
    } else {
        validate_version(version).map_err(ResolveError::InvalidVersion)?;
        store.release(version.to_string(), arch.to_string()).await?
    };
    match found {
        Some(r) if r.info.broken.is_some() => Err(ResolveError::Broken(Box::new(r))),
        Some(r) => Ok(r),
        None => Err(ResolveError::NotFound {
            version: version.to_string(),
            arch: arch.to_string(),
            available: available(&store.releases().await?),
        }),
    }
}

/// Marks a build broken and ends its undelivered `agent.upgrade` deliveries (with the usual
/// bookkeeping for each). None when no such build exists.
pub async fn mark_broken(
    releases: &Releases,
    version: &str,
    arch: &str,
    reason: &str,
    by: &str,
) -> Result<Option<StoredRelease>, StoreError> {
    let Some((release, ended)) = releases
        .store
        .mark_release_broken(
            version.to_string(),
            arch.to_string(),
            reason.to_string(),
            by.to_string(),
        )
        .await?
    else {
        return Ok(None);
    };
    finished(releases, &ended);
    tracing::warn!(
        version,
        arch,
        by,
        reason,
        undelivered = ended.len(),
        "agent build marked broken"
    );
    Ok(Some(release))
}

fn finished(releases: &Releases, ended: &[Finalised]) {
    releases.commands.all_finished(ended);
}

/// What publishing and marking builds use: the store, the signing key (manifests), the data
/// directory (the files) and the commands service (deliveries a broken mark ends).
#[derive(Clone)]
pub struct Releases {
    store: Store,
    commands: Commands,
    key: Arc<SigningKey>,
    data_dir: PathBuf,
}

impl Releases {
    pub fn new(
        store: Store,
        commands: Commands,
        key: Arc<SigningKey>,
        data_dir: PathBuf,
    ) -> Releases {
        Releases {
            store,
            commands,
            key,
            data_dir,
        }
    }
}

// === agent.upgrade ===

/// Why the relay refuses to send an `agent.upgrade`.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRefusal {
    #[error("invalid version: {0}")]
    InvalidVersion(InvalidVersion),
    #[error("agent {agent} reports architecture {arch:?}, for which no builds exist ({})", ARCHES.join(", "))]
    UnknownArch { agent: String, arch: String },
    #[error("{0}")]
    NoBuild(String),
    #[error("{0}")]
    Broken(String),
    #[error(
        "agent {agent} already runs {running}{}; there is nothing to upgrade (an agent refuses \
         an upgrade to the version it runs, even with rollback)",
        same_as(.running, .version)
    )]
    AlreadyRuns {
        agent: String,
        running: String,
        version: String,
    },
    #[error(
        "agent {agent} runs {running}, which is newer than {version} (send rollback to go back \
         to an older version)"
    )]
    NotNewer {
        agent: String,
        running: String,
        version: String,
    },
}

/// `", the same version as 1.2.0+b"` when the build's version is spelled differently.
fn same_as(running: &str, version: &str) -> String {
    if running == version {
        String::new()
    } else {
        format!(", the same version as {version}")
    }
}

/// The version an agent runs, as far as the relay knows: the one it announced on its live
/// connection (the running process), else the stored one (its last connect or heartbeat).
pub fn running_version(hub: &Hub, agent_id: &str, stored: &str) -> String {
    hub.agent_version(agent_id)
        .unwrap_or_else(|| stored.to_string())
}

/// The `agent.upgrade` for one agent (its architecture from its facts, `running` its reported
/// version, see [`running_version`]), or why it must not be sent: the build is missing or
/// broken, the agent already runs that version (refused even with rollback: the agent would
/// refuse it), or, without rollback, it runs a newer one.
pub async fn upgrade_command(
    store: &Store,
    agent_id: &str,
    agent_arch: &str,
    running: &str,
    req: &UpgradeRequest,
) -> Result<Result<(Command, StoredRelease), UpgradeRefusal>, StoreError> {
    if req.version != LATEST {
        if let Err(e) = validate_version(&req.version) {
            return Ok(Err(UpgradeRefusal::InvalidVersion(e)));
        }
    }
    if normalize_arch(agent_arch).is_none() {
        return Ok(Err(UpgradeRefusal::UnknownArch {
            agent: agent_id.to_string(),
            arch: agent_arch.to_string(),
        }));
    }
    let release = match resolve(store, &req.version, agent_arch).await {
        Ok(r) => r,
        Err(ResolveError::Store(e)) => return Err(e),
        Err(e @ ResolveError::Broken(_)) => return Ok(Err(UpgradeRefusal::Broken(e.to_string()))),
        Err(e) => return Ok(Err(UpgradeRefusal::NoBuild(e.to_string()))),
    };
    // A version the relay cannot order (not MAJOR.MINOR.PATCH) does not block an upgrade.
    let order = validate_version(running)
        .is_ok()
        .then(|| compare_versions(&release.info.version, running));
    if order.is_some_and(|o| o.is_eq()) {
        // The agent refuses it (rollback or not); sent anyway, it would only fail.
        return Ok(Err(UpgradeRefusal::AlreadyRuns {
            agent: agent_id.to_string(),
            running: running.to_string(),
            version: release.info.version,
        }));
    }
    if !req.rollback && order.is_some_and(|o| o.is_lt()) {
        return Ok(Err(UpgradeRefusal::NotNewer {
            agent: agent_id.to_string(),
            running: running.to_string(),
            version: release.info.version,
        }));
    }
    let command = Command::AgentUpgrade(AgentUpgradeArgs {
        manifest: release.manifest.clone(),
        rollback: req.rollback,
    });
    Ok(Ok((command, release)))
}

// === install.sh ===

/// Characters allowed in the relay URL written into `install.sh` (a URL's, minus quotes,
/// backslashes, `$` and backticks, so it is inert in any shell quoting).
fn shell_safe_url(url: &str) -> bool {
    !url.is_empty()
        && url.len() <= 512
        && url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!&()*+,;=%".contains(&b))
}

flotilla_shared::message_error!(
    /// Why the relay cannot tell the URL agents reach it at.
    pub NoRelayUrl
);

/// The relay's URL for an installer: `public_url` when configured, else `<proto>://<host>` as
/// the request reached the relay. Err names what is wrong.
pub fn relay_url(public_url: &str, proto: &str, host: Option<&str>) -> Result<String, NoRelayUrl> {
    relay_url_message(public_url, proto, host).map_err(NoRelayUrl)
}

fn relay_url_message(public_url: &str, proto: &str, host: Option<&str>) -> Result<String, String> {
    let configured = public_url.trim().trim_end_matches('/');
    let url = if !configured.is_empty() {
        configured.to_string()
    } else {
        let host = host.map(str::trim).filter(|h| !h.is_empty()).ok_or(
            "the request has no Host header; set [alerts] public_url in relay.toml".to_string(),
        )?;
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(format!(
                "the Host header {host:?} is not a host name or address; set [alerts] \
                 public_url in relay.toml"
            ));
        }
        format!("{proto}://{host}")
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) || !shell_safe_url(&url) {
        return Err(format!(
            "the relay URL {url:?} cannot be written into install.sh (expected http(s)://host[:port][/path])"
        ));
    }
    Ok(url)
}

/// `install.sh` with its placeholders filled in.
pub fn render_install_sh(template: &str, url: &str, fingerprint: &str, public_key: &str) -> String {
    template
        .replace(PLACEHOLDER_URL, url)
        .replace(PLACEHOLDER_FINGERPRINT, fingerprint)
        .replace(PLACEHOLDER_PUBLIC_KEY, public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_url_from_config_or_host() {
        assert_eq!(
            relay_url("https://relay.example.com/", "http", Some("x")).unwrap(),
            "https://relay.example.com"
        );
        assert_eq!(
            relay_url("", "http", Some("127.0.0.1:8700")).unwrap(),
            "http://127.0.0.1:8700"
        );
        assert_eq!(
            relay_url("", "https", Some("[::1]:8700")).unwrap(),
            "https://[::1]:8700"
        );
        assert!(relay_url("", "http", None).unwrap_err().contains("Host"));
        assert!(relay_url("", "http", Some("a'b")).is_err());
        assert!(relay_url("", "http", Some("a$(reboot)")).is_err());
        assert!(relay_url("https://x/`id`", "http", None).is_err());
        assert!(relay_url("ftp://x", "http", None).is_err());
    }

    #[test]
    fn placeholders_are_filled() {
        let t = "URL='@@RELAY_URL@@'\nFP='@@RELAY_FINGERPRINT@@'\nKEY='@@RELAY_PUBLIC_KEY@@'\n";
        assert_eq!(
            render_install_sh(t, "http://r:1", "SHA256:abc", "a+b/c="),
            "URL='http://r:1'\nFP='SHA256:abc'\nKEY='a+b/c='\n"
        );
        for p in [
            PLACEHOLDER_URL,
            PLACEHOLDER_FINGERPRINT,
            PLACEHOLDER_PUBLIC_KEY,
        ] {
            assert!(INSTALL_SH.contains(p), "install.sh lacks {p}");
        }
    }

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut x86 = vec![0u8; 64];
        x86[..4].copy_from_slice(b"\x7fELF");
        x86[4] = 2;
        x86[5] = 1;
        x86[18] = 62;
        assert_eq!(elf_arch(&x86).unwrap(), "x86_64");
        let mut arm = x86.clone();
        arm[18] = 183;
        assert_eq!(elf_arch(&arm).unwrap(), "aarch64");
        assert!(elf_arch(b"#!/bin/sh\necho flotilla-agent 0.3.0\n")
            .unwrap_err()
            .contains("not an ELF"));
        assert!(elf_arch(&x86[..10]).is_err());
        let mut riscv = x86.clone();
        riscv[18] = 243;
        assert!(elf_arch(&riscv).unwrap_err().contains("243"));
        // This test binary itself.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            elf_arch(&me[..ELF_HEAD]).unwrap(),
            flotilla_shared::release::this_arch()
        );
    }

    #[test]
    fn arches_are_canonical_and_errors_name_them() {
        assert_eq!(canonical_arch("amd64").unwrap(), "x86_64");
        assert_eq!(canonical_arch("aarch64").unwrap(), "aarch64");
        let e = canonical_arch("riscv64").unwrap_err();
        assert!(
            e.contains("x86_64") && e.contains("aarch64") && e.contains("riscv64"),
            "{e}"
        );
    }
}
