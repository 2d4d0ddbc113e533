//! The unprivileged agent's side of `agent.upgrade`.
//!
//! The old process verifies the relay-signed manifest (pinned relay key, architecture, no
//! downgrade without `rollback`), downloads the build from the relay into
//! `<state_dir>/upgrade/staged/` with a running SHA-256 and a hard cap at the manifest's size,
//! checks size and hash, runs the new binary's `--version`, and only then writes `request.json`.
//! It waits (bounded) for the root updater to answer `applied` in `result.json` and is then
//! restarted by it; the command stays `running` in the journal across that restart.
//!
//! The new process finishes the command: when it runs the requested version it writes
//! `confirmed` after its first welcome from the relay (that is what the updater waits for) and
//! reports success; when it still runs the old version and the updater reverted, it reports
//! `upgrade_reverted` with the updater's reason.

use super::files::{
    binary_version, create_dir, remove_if_exists, sync_dir, write_atomic, Sha256, UpgradePaths,
    UpgradeRequest, UpgradeResult, UpgradeStatus, STAGED_PREFIX, UPDATER_LIMIT,
};
use crate::state::State;
use chrono::Utc;
use flotilla_shared::command::{
    error_codes, AgentUpgradeArgs, AgentUpgradeOutput, CommandResult, ErrorInfo, ResultStatus,
    SignedCommand,
};
use flotilla_shared::protocol::WelcomeBody;
use flotilla_shared::release::{
    compare_versions, this_arch, ManifestError, ReleaseManifest, MAX_RELEASE_BYTES,
};
use flotilla_shared::signing::PublicKey;
use std::cmp::Ordering;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Default of `[upgrade] updater_pickup_secs`.
pub const DEFAULT_UPDATER_PICKUP_SECS: u64 = 30;
/// Default of `[upgrade] download_timeout_secs`.
pub const DEFAULT_DOWNLOAD_TIMEOUT_SECS: u64 = 600;
/// The new binary's `--version` must answer within this time.
pub const SMOKE_TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `result.json` is read while waiting for the updater.
const POLL: Duration = Duration::from_millis(250);
/// How often `result.json` is read after `applied`, while waiting to be restarted.
const RESULT_POLL: Duration = Duration::from_secs(2);
/// How often the new process tries again to write `confirmed` when that failed.
const CONFIRM_RETRY: Duration = Duration::from_secs(5);
/// After `applied` the updater restarts the agent at once; still running after this long, the
/// agent was not restarted (the updater's unit gives up after 10 minutes).
const RESTART_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long the new process waits for the updater to acknowledge `confirmed`.
const CONFIRM_ACK: Duration = Duration::from_secs(15);
/// Staged files no upgrade refers to are removed at start once they are this old (younger ones
/// may still be read by an updater that is running right now).
const STALE_STAGED_AFTER: Duration = Duration::from_secs(600);

/// Timing of the agent's side (tests shorten them).
#[derive(Clone, Debug)]
pub struct UpgradeSettings {
    /// How long the updater gets to answer `applied` (or `refused`) to a request.
    pub updater_pickup: Duration,
    /// Longest the download may take.
    pub download_timeout: Duration,
    /// Longest the new binary's `--version` may take.
    pub smoke_timeout: Duration,
    /// How long the new process waits for the updater's `confirmed` after writing its own.
    pub confirm_ack: Duration,
    /// How long the old process waits to be restarted after `applied`.
    pub restart_wait: Duration,
    /// How long the updater may take after `accepted` (its unit's `TimeoutStartSec`).
    pub updater_limit: Duration,
    /// How often a failed write of `confirmed` is tried again.
    pub confirm_retry: Duration,
}

impl Default for UpgradeSettings {
    fn default() -> Self {
        UpgradeSettings {
            updater_pickup: Duration::from_secs(DEFAULT_UPDATER_PICKUP_SECS),
            download_timeout: Duration::from_secs(DEFAULT_DOWNLOAD_TIMEOUT_SECS),
            smoke_timeout: SMOKE_TEST_TIMEOUT,
            confirm_ack: CONFIRM_ACK,
            restart_wait: RESTART_WAIT,
            updater_limit: UPDATER_LIMIT,
            confirm_retry: CONFIRM_RETRY,
        }
    }
}

/// What `Upgrades::new` needs.
#[derive(Clone, Debug)]
pub struct UpgradeOptions {
    pub state_dir: PathBuf,
    /// The relay's base URL (`http(s)://host[:port][/prefix]`); builds are downloaded from
    /// `<relay_url>/download/agent/<version>/<arch>`.
    pub relay_url: String,
    /// PEM CAs trusted for an https relay instead of the system's (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// The relay key pinned at enrollment.
    pub relay_key: PublicKey,
    pub settings: UpgradeSettings,
}

/// The agent's upgrade machinery; cheap to clone.
#[derive(Clone)]
pub struct Upgrades {
    inner: Arc<Inner>,
}

struct Inner {
    paths: UpgradePaths,
    state: State,
    relay_key: PublicKey,
    /// The relay the agent is connected to (set by the session; the first of the list before).
    relay_base: Arc<Mutex<String>>,
    /// Built for each download (upgrades are rare; the idle agent keeps no CA store for it).
    ca_file: Option<PathBuf>,
    settings: UpgradeSettings,
    /// The agent.upgrade running in this process, if any.
    running: Mutex<Option<String>>,
    /// Upgrades to this process's version that wait for the first welcome.
    pending: Mutex<Vec<Pending>>,
}

#[derive(Clone, Debug)]
struct Pending {
    command_id: String,
    from_version: String,
    to_version: String,
    arch: String,
}

/// How an `agent.upgrade` ended in the process that received it.
#[derive(Debug, PartialEq)]
pub enum UpgradeOutcome {
    /// Refused or failed; the old version still runs and nothing was changed. To be reported.
    Failed(ErrorInfo),
    /// The updater installed the new build and is restarting the agent: the command stays
    /// running in the journal and the next process reports it.
    Applied,
    /// The agent is stopping; the command stays running in the journal.
    Stopped,
}

/// What a starting agent does with an `agent.upgrade` the previous process left running.
#[derive(Debug, PartialEq)]
pub enum Resumed {
    /// This process runs the requested version: it is reported after the first welcome.
    Pending,
    /// The updater's verdict is known (reverted, refused): report this result.
    Finished(Box<CommandResult>),
    /// Neither: report it interrupted, like any other command.
    Interrupted,
}

fn refused(message: String) -> ErrorInfo {
    ErrorInfo {
        code: error_codes::UPGRADE_REFUSED.into(),
        message,
    }
}

fn failed(message: String) -> ErrorInfo {
    ErrorInfo {
        code: error_codes::UPGRADE_FAILED.into(),
        message,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Releases the "an upgrade is running" mark when dropped.
struct Busy<'a>(&'a Mutex<Option<String>>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Upgrades {
    /// Checks the relay URL; the download client is built when an upgrade runs.
    pub fn new(opts: UpgradeOptions, state: State) -> anyhow::Result<Upgrades> {
        let relay_base = crate::transport::normalise_relay_url(&opts.relay_url)?;
        Ok(Upgrades {
            inner: Arc::new(Inner {
                paths: UpgradePaths::new(&opts.state_dir),
                state,
                relay_key: opts.relay_key,
                relay_base: Arc::new(Mutex::new(relay_base)),
                ca_file: opts.ca_file,
                settings: opts.settings,
                running: Mutex::new(None),
                pending: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Where builds are downloaded from: the session keeps it on the relay it is connected to.
    pub fn relay_base(&self) -> Arc<Mutex<String>> {
        self.inner.relay_base.clone()
    }

    pub fn paths(&self) -> &UpgradePaths {
        &self.inner.paths
    }

    /// Runs `agent.upgrade` in the old process (see the module docs). `signed` is the command as
    /// the relay signed it; the updater needs it to accept a rollback.
    pub async fn upgrade(
        &self,
        command_id: &str,
        args: &AgentUpgradeArgs,
        signed: Option<&SignedCommand>,
        stopping: &CancellationToken,
    ) -> UpgradeOutcome {
        self.upgrade_from(
            command_id,
            args,
            signed,
            flotilla_shared::release::version(),
            stopping,
        )
        .await
    }

    /// `upgrade` with the running version given.
    pub async fn upgrade_from(
        &self,
        command_id: &str,
        args: &AgentUpgradeArgs,
        signed: Option<&SignedCommand>,
        running_version: &str,
        stopping: &CancellationToken,
    ) -> UpgradeOutcome {
        let inner = &self.inner;
        let _busy = {
            let mut running = inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = running.as_ref() {
                return UpgradeOutcome::Failed(failed(format!(
                    "another agent.upgrade ({other}) is already running on this agent"
                )));
            }
            *running = Some(command_id.to_string());
            Busy(&inner.running)
        };
        let manifest = match self.check(args, running_version) {
            Ok(m) => m,
            Err(e) => {
                warn!(command_id, error = e.message, "agent.upgrade refused");
                return UpgradeOutcome::Failed(e);
            }
        };
        info!(
            command_id,
            from = running_version,
            to = manifest.version,
            arch = manifest.arch,
            rollback = args.rollback,
            "upgrading: downloading and verifying the new build"
        );
        let staged = inner.paths.staged(&manifest.version);
        let prepared = tokio::select! {
            _ = stopping.cancelled() => {
                self.discard_staged(&manifest.version);
                return UpgradeOutcome::Stopped;
            }
            r = self.stage(&manifest) => r,
        };
        if let Err(e) = prepared {
            self.discard_staged(&manifest.version);
            warn!(
                command_id,
                code = e.code,
                error = e.message,
                "agent.upgrade failed"
            );
            return UpgradeOutcome::Failed(e);
        }
        let request = UpgradeRequest {
            command_id: command_id.to_string(),
            from_version: running_version.to_string(),
            to_version: manifest.version.clone(),
            arch: manifest.arch.clone(),
            binary: staged,
            manifest: args.manifest.clone(),
            rollback: args.rollback,
            command: signed.cloned(),
            requested_at: Utc::now(),
        };
        if let Err(e) = self.write_request(&request).await {
            self.discard_staged(&manifest.version);
            return UpgradeOutcome::Failed(failed(format!(
                "cannot write the upgrade request {}: {e}",
                inner.paths.request().display()
            )));
        }
        info!(
            command_id,
            to = manifest.version,
            "new build verified and staged; waiting for flotilla-agent-updater"
        );
        match self.wait_for_updater(&request, stopping).await {
            Ok(()) => {}
            Err(outcome) => return outcome,
        }
        info!(
            command_id,
            to = manifest.version,
            "the updater installed the new build; waiting to be restarted"
        );
        // Normally stopped by the updater's restart at once. Until then `result.json` is
        // polled: a restart the updater could not issue ends in `failed` (the previous binary
        // back in place), reported right away.
        let waited = Instant::now() + inner.settings.restart_wait;
        loop {
            if let Some(r) = self.result_for(command_id) {
                match r.status {
                    UpgradeStatus::Failed => {
                        self.discard_staged(&manifest.version);
                        return UpgradeOutcome::Failed(failed_error(&r));
                    }
                    UpgradeStatus::Reverted => return UpgradeOutcome::Failed(reverted_error(&r)),
                    _ => {}
                }
            }
            if Instant::now() >= waited {
                return UpgradeOutcome::Failed(failed(format!(
                    "the updater installed {} but this agent (still {running_version}) was not \
                     restarted within {} s; restart the flotilla-agent service to run it",
                    manifest.version,
                    inner.settings.restart_wait.as_secs()
                )));
            }
            tokio::select! {
                _ = stopping.cancelled() => return UpgradeOutcome::Applied,
                _ = tokio::time::sleep(RESULT_POLL) => {}
            }
        }
    }

    /// Signature (pinned relay key), architecture, version rule.
    fn check(
        &self,
        args: &AgentUpgradeArgs,
        running_version: &str,
    ) -> Result<ReleaseManifest, ErrorInfo> {
        let key = &self.inner.relay_key;
        let m = args.manifest.verify(key).map_err(|e| match e {
            ManifestError::Signature(s) => refused(format!(
                "the release manifest's signature does not verify with the pinned relay key {}: \
                 {s}",
                key.fingerprint()
            )),
            ManifestError::Malformed(m) => {
                refused(format!("the signed release manifest is not valid: {m}"))
            }
        })?;
        if m.arch != this_arch() {
            return Err(refused(format!(
                "the build is for {}, this agent runs on {}",
                m.arch,
                this_arch()
            )));
        }
        match compare_versions(&m.version, running_version) {
            Ordering::Greater => {}
            Ordering::Equal => {
                return Err(refused(format!(
                    "{} is the version this agent already runs; nothing to upgrade",
                    m.version
                )))
            }
            Ordering::Less if args.rollback => {}
            Ordering::Less => {
                return Err(refused(format!(
                    "{} is older than the running {running_version}; the relay must send rollback",
                    m.version
                )))
            }
        }
        Ok(m)
    }

    /// Downloads, checks and smoke-tests the build into its staged path.
    async fn stage(&self, m: &ReleaseManifest) -> Result<(), ErrorInfo> {
        let paths = &self.inner.paths;
        let dir = paths.staged_dir();
        create_dir(&dir, 0o700)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let partial = dir.join(format!(".{STAGED_PREFIX}{}.partial", m.version));
        self.download(m, &partial).await?;
        let (bin, timeout) = (partial.clone(), self.inner.settings.smoke_timeout);
        let printed = tokio::task::spawn_blocking(move || binary_version(&bin, timeout))
            .await
            .map_err(|e| failed(format!("the --version smoke test task failed: {e}")))?
            .map_err(|e| refused(format!("smoke test of the new binary failed: {e}")))?;
        if printed != m.version {
            return Err(refused(format!(
                "the new binary's --version prints {printed}, the signed manifest says {}",
                m.version
            )));
        }
        let staged = paths.staged(&m.version);
        std::fs::rename(&partial, &staged)
            .and_then(|()| sync_dir(&dir))
            .map_err(|e| {
                failed(format!(
                    "cannot move the download to {}: {e}",
                    staged.display()
                ))
            })
    }

    /// Streams the build to `partial`, hashing it and stopping as soon as it exceeds the
    /// manifest's size; then checks size and SHA-256 and makes it executable.
    async fn download(&self, m: &ReleaseManifest, partial: &Path) -> Result<(), ErrorInfo> {
        let base = self
            .inner
            .relay_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let url = format!("{base}/download/agent/{}/{}", m.version, m.arch);
        // Trusts the relay as the websocket does (its CA file, else the system's roots).
        let client = crate::transport::http_client_builder(self.inner.ca_file.as_deref())
            .and_then(|b| {
                b.connect_timeout(Duration::from_secs(20))
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .map_err(|e| failed(format!("cannot set up the download client: {e:#}")))?;
        let mut response = client
            .get(&url)
            .timeout(self.inner.settings.download_timeout)
            .send()
            .await
            .map_err(|e| failed(format!("cannot download {url}: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            // The start of the body only: an error page is not downloaded whole.
            let mut head = Vec::new();
            while head.len() < 1024 {
                match response.chunk().await {
                    Ok(Some(c)) => head.extend_from_slice(&c),
                    _ => break,
                }
            }
            let snippet: String = String::from_utf8_lossy(&head).chars().take(300).collect();
            return Err(failed(if status == reqwest::StatusCode::GONE {
                format!(
                    "the relay has marked build {} for {} broken (HTTP 410): {snippet}",
                    m.version, m.arch
                )
            } else {
                format!("the relay answered HTTP {status} for {url}: {snippet}")
            }));
        }
        if let Some(len) = response.content_length() {
            if len != m.size {
                return Err(refused(format!(
                    "the relay announces {len} bytes for build {} ({}), the signed manifest says {}",
                    m.version, m.arch, m.size
                )));
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o700)
            .open(partial)
            .await
            .map_err(|e| failed(format!("cannot create {}: {e}", partial.display())))?;
        let mut hash = Sha256::default();
        let cap = m.size.min(MAX_RELEASE_BYTES);
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(failed(format!(
                        "the download of {url} broke off after {} bytes: {}",
                        hash.len(),
                        error_chain(&e)
                    )))
                }
            };
            if hash.len() + chunk.len() as u64 > cap {
                return Err(refused(format!(
                    "the download of build {} exceeds the signed manifest's size of {} bytes; \
                     stopped",
                    m.version, m.size
                )));
            }
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(format!("cannot write {}: {e}", partial.display())))?;
        }
        let len = hash.len();
        if len != m.size {
            return Err(refused(format!(
                "the download is {len} bytes, the signed manifest says {}",
                m.size
            )));
        }
        let sha = hash.finish();
        if sha != m.sha256 {
            return Err(refused(format!(
                "sha256 of the download is {sha}, the signed manifest says {}",
                m.sha256
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| failed(format!("cannot write {}: {e}", partial.display())))?;
        drop(file);
        tokio::fs::set_permissions(partial, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| failed(format!("cannot chmod {}: {e}", partial.display())))?;
        debug!(bytes = len, sha256 = sha, "download verified");
        Ok(())
    }

    /// Removes a stale `result.json`, then writes `request.json` atomically (the last step).
    async fn write_request(&self, request: &UpgradeRequest) -> std::io::Result<()> {
        let paths = self.inner.paths.clone();
        let json = serde_json::to_vec_pretty(request).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            remove_if_exists(&paths.result())?;
            write_atomic(&paths.request(), &json, 0o600)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn result_for(&self, command_id: &str) -> Option<UpgradeResult> {
        self.inner
            .paths
            .read_result()
            .filter(|r| r.command_id == command_id)
    }

    /// Waits for `applied`; every other ending is returned as the outcome to report, with the
    /// request and the staged file removed. The updater has `updater_pickup` to take the request
    /// (it answers `accepted` at once), then its own limit (`UPDATER_LIMIT`) to answer.
    async fn wait_for_updater(
        &self,
        request: &UpgradeRequest,
        stopping: &CancellationToken,
    ) -> Result<(), UpgradeOutcome> {
        let inner = &self.inner;
        let pickup = inner.settings.updater_pickup;
        let limit = inner.settings.updater_limit;
        let mut deadline = Instant::now() + pickup;
        // Set once the updater took the request.
        let mut taken = false;
        loop {
            if let Some(r) = self.result_for(&request.command_id) {
                match r.status {
                    UpgradeStatus::Applied | UpgradeStatus::Confirmed => return Ok(()),
                    UpgradeStatus::Accepted => {
                        if !taken {
                            taken = true;
                            deadline = Instant::now() + limit;
                            info!(
                                command_id = request.command_id,
                                "the updater took the request; verifying and installing"
                            );
                        }
                    }
                    UpgradeStatus::Refused => {
                        self.discard_staged(&request.to_version);
                        let reason = r.reason.unwrap_or_default();
                        warn!(
                            command_id = request.command_id,
                            reason, "the updater refused the upgrade"
                        );
                        return Err(UpgradeOutcome::Failed(refused(format!(
                            "the updater refused the upgrade to {}: {reason}",
                            request.to_version
                        ))));
                    }
                    UpgradeStatus::Failed => {
                        self.discard_staged(&request.to_version);
                        return Err(UpgradeOutcome::Failed(failed_error(&r)));
                    }
                    UpgradeStatus::Reverted => {
                        return Err(UpgradeOutcome::Failed(reverted_error(&r)));
                    }
                }
            }
            if Instant::now() >= deadline {
                let gone = match std::fs::remove_file(inner.paths.request()) {
                    Ok(()) => false,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => {
                        warn!(error = %e, "cannot remove the unanswered upgrade request");
                        false
                    }
                };
                if gone && !taken {
                    // Taken just now, its `accepted` not (yet) written: the updater is at work.
                    taken = true;
                    deadline = Instant::now() + limit;
                    continue;
                }
                self.discard_staged(&request.to_version);
                let message = if taken {
                    format!(
                        "the updater took the request but reported nothing within {} s; see \
                         `journalctl -u flotilla-agent-updater`",
                        limit.as_secs()
                    )
                } else {
                    "the updater did not pick up the request; is flotilla-agent-updater.path \
                     enabled?"
                        .to_string()
                };
                warn!(
                    command_id = request.command_id,
                    message, "agent.upgrade failed"
                );
                return Err(UpgradeOutcome::Failed(failed(message)));
            }
            tokio::select! {
                _ = stopping.cancelled() => {
                    // The updater's restart may stop the agent before it read `applied`.
                    let applied = self.result_for(&request.command_id).is_some_and(|r| {
                        matches!(r.status, UpgradeStatus::Applied | UpgradeStatus::Confirmed)
                    });
                    if applied {
                        return Err(UpgradeOutcome::Applied);
                    }
                    // Not picked up yet: take the request back so nothing happens behind the
                    // next process's back. Picked up: the updater finishes what it started.
                    if std::fs::remove_file(inner.paths.request()).is_ok() {
                        self.discard_staged(&request.to_version);
                    }
                    return Err(UpgradeOutcome::Stopped);
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Removes the staged file of `version` and its partial download.
    fn discard_staged(&self, version: &str) {
        let paths = &self.inner.paths;
        let dir = paths.staged_dir();
        for p in [
            paths.staged(version),
            dir.join(format!(".{STAGED_PREFIX}{version}.partial")),
        ] {
            if let Err(e) = remove_if_exists(&p) {
                warn!(path = %p.display(), error = %e, "cannot remove a staged agent binary");
            }
        }
    }

    // --- the next process ---

    /// Decides what to do with an `agent.upgrade` the previous process left running (called
    /// before the executor starts; see `executor::fail_interrupted`).
    pub fn resume(&self, command_id: &str, args: &AgentUpgradeArgs) -> Resumed {
        self.resume_as(command_id, args, flotilla_shared::release::version())
    }

    /// `resume` with the running version given.
    pub fn resume_as(
        &self,
        command_id: &str,
        args: &AgentUpgradeArgs,
        running_version: &str,
    ) -> Resumed {
        // Verified when the command was accepted; only read here.
        let Ok(m) = serde_json::from_str::<ReleaseManifest>(&args.manifest.manifest) else {
            return Resumed::Interrupted;
        };
        let result = self.result_for(command_id);
        if compare_versions(running_version, &m.version) == Ordering::Equal {
            let from_version = result
                .as_ref()
                .map(|r| r.from_version.clone())
                .unwrap_or_else(|| "unknown".into());
            info!(
                command_id,
                version = running_version,
                "running the version an interrupted agent.upgrade asked for; confirming it \
                 once the relay welcomes this agent"
            );
            self.inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Pending {
                    command_id: command_id.to_string(),
                    from_version,
                    to_version: m.version,
                    arch: m.arch,
                });
            return Resumed::Pending;
        }
        let now = Utc::now();
        match result {
            Some(r) if r.status == UpgradeStatus::Reverted => {
                self.discard_staged(&m.version);
                warn!(
                    command_id,
                    to = m.version,
                    reason = r.reason.as_deref().unwrap_or(""),
                    "the upgrade was reverted by the updater"
                );
                let output = AgentUpgradeOutput {
                    from_version: r.from_version.clone(),
                    to_version: m.version.clone(),
                    arch: m.arch.clone(),
                    running_version: running_version.to_string(),
                };
                Resumed::Finished(Box::new(CommandResult {
                    command_id: command_id.to_string(),
                    status: ResultStatus::Failed,
                    output: serde_json::to_value(&output).ok(),
                    error: Some(reverted_error(&r)),
                    started_at: now,
                    finished_at: now,
                }))
            }
            Some(r) if r.status == UpgradeStatus::Failed => {
                self.discard_staged(&m.version);
                Resumed::Finished(Box::new(CommandResult {
                    command_id: command_id.to_string(),
                    status: ResultStatus::Failed,
                    output: None,
                    error: Some(failed_error(&r)),
                    started_at: now,
                    finished_at: now,
                }))
            }
            Some(r) if r.status == UpgradeStatus::Refused => {
                self.discard_staged(&m.version);
                Resumed::Finished(Box::new(CommandResult {
                    command_id: command_id.to_string(),
                    status: ResultStatus::Failed,
                    output: None,
                    error: Some(refused(format!(
                        "the updater refused the upgrade to {}: {}",
                        m.version,
                        r.reason.as_deref().unwrap_or("")
                    ))),
                    started_at: now,
                    finished_at: now,
                }))
            }
            _ => {
                // A request this process will never wait for must not be applied later.
                let paths = &self.inner.paths;
                let ours = std::fs::read_to_string(paths.request())
                    .ok()
                    .and_then(|t| serde_json::from_str::<UpgradeRequest>(&t).ok())
                    .is_some_and(|r| r.command_id == command_id);
                if ours && std::fs::remove_file(paths.request()).is_ok() {
                    self.discard_staged(&m.version);
                }
                Resumed::Interrupted
            }
        }
    }

    /// Confirms every pending upgrade to this version: writes `confirmed` (the updater stops
    /// watching), waits briefly for the updater's acknowledgement, and reports success. An
    /// upgrade the updater is reverting is left alone (the old version reports it).
    pub async fn confirm_pending(&self) {
        self.confirm_pending_as(flotilla_shared::release::version())
            .await
    }

    /// `confirm_pending` with the running version given.
    pub async fn confirm_pending_as(&self, running_version: &str) {
        let pending: Vec<Pending> =
            std::mem::take(&mut *self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for p in pending {
            if !self.confirm(p.clone(), running_version).await {
                // Not confirmed (the file could not be written): still pending, tried again.
                self.inner
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(p);
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether the upgrade is dealt with (reported, or left to the old version); `false` when
    /// `confirmed` could not be written: nothing is reported, the command stays running.
    async fn confirm(&self, p: Pending, running_version: &str) -> bool {
        let inner = &self.inner;
        let reverting = |r: &Option<UpgradeResult>| {
            r.as_ref()
                .is_some_and(|r| r.status == UpgradeStatus::Reverted)
        };
        if reverting(&self.result_for(&p.command_id)) {
            warn!(
                command_id = p.command_id,
                "the updater is reverting this version; not confirming it"
            );
            return true;
        }
        let confirmed = inner.paths.confirmed();
        let text = format!("{running_version}\n");
        let written = {
            let (dir, path) = (inner.paths.dir.clone(), confirmed.clone());
            tokio::task::spawn_blocking(move || {
                create_dir(&dir, 0o700)?;
                write_atomic(&path, text.as_bytes(), 0o644)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
        };
        if let Err(e) = written {
            warn!(
                command_id = p.command_id,
                path = %confirmed.display(),
                error = %e,
                "cannot write the upgrade confirmation; not reporting success, trying again"
            );
            return false;
        }
        info!(
            command_id = p.command_id,
            version = running_version,
            "reached the relay with the new version; confirmed the upgrade"
        );
        let deadline = Instant::now() + inner.settings.confirm_ack;
        loop {
            let r = self.result_for(&p.command_id);
            if reverting(&r) {
                warn!(
                    command_id = p.command_id,
                    "the updater reverted this version after all; not reporting success"
                );
                return true;
            }
            if r.is_some_and(|r| r.status == UpgradeStatus::Confirmed) {
                break;
            }
            if Instant::now() >= deadline {
                debug!(
                    command_id = p.command_id,
                    "no acknowledgement from the updater; reporting success anyway"
                );
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let now = Utc::now();
        let output = AgentUpgradeOutput {
            from_version: p.from_version.clone(),
            to_version: p.to_version.clone(),
            arch: p.arch.clone(),
            running_version: running_version.to_string(),
        };
        let result = CommandResult {
            command_id: p.command_id.clone(),
            status: ResultStatus::Succeeded,
            output: serde_json::to_value(&output).ok(),
            error: None,
            started_at: now,
            finished_at: now,
        };
        if let Err(e) = inner.state.finish_command(result).await {
            warn!(
                command_id = p.command_id,
                error = format!("{e:#}"),
                "cannot store the upgrade's result"
            );
        }
        self.discard_staged(&p.to_version);
        true
    }

    /// Removes staged binaries and partial downloads no unfinished upgrade refers to.
    pub fn cleanup_staged(&self) {
        let paths = &self.inner.paths;
        let Ok(entries) = std::fs::read_dir(paths.staged_dir()) else {
            return;
        };
        let mut keep: Vec<PathBuf> = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| paths.staged(&p.to_version))
            .collect();
        if let Some(r) = std::fs::read_to_string(paths.request())
            .ok()
            .and_then(|t| serde_json::from_str::<UpgradeRequest>(&t).ok())
        {
            keep.push(r.binary);
        }
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= STALE_STAGED_AFTER);
            if old {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        info!(path = %path.display(), "removed a leftover staged agent binary")
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot remove a leftover staged agent binary")
                    }
                }
            }
        }
    }

    /// The agent task: removes leftovers, confirms pending upgrades after the first welcome
    /// from the relay, then idles until shutdown.
    pub async fn run(
        self,
        mut welcome: watch::Receiver<Option<WelcomeBody>>,
        stopping: CancellationToken,
    ) -> anyhow::Result<()> {
        self.cleanup_staged();
        if self.has_pending() {
            let first_welcome = async {
                loop {
                    if welcome.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    if welcome.borrow_and_update().is_some() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = stopping.cancelled() => return Ok(()),
                _ = first_welcome => self.confirm_pending().await,
            }
            while self.has_pending() {
                tokio::select! {
                    _ = stopping.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.inner.settings.confirm_retry) => {
                        self.confirm_pending().await
                    }
                }
            }
        }
        stopping.cancelled().await;
        Ok(())
    }
}

fn failed_error(r: &UpgradeResult) -> ErrorInfo {
    failed(format!(
        "the updater could not upgrade to {}: {}",
        r.to_version,
        r.reason.as_deref().unwrap_or("no reason given")
    ))
}

fn reverted_error(r: &UpgradeResult) -> ErrorInfo {
    ErrorInfo {
        code: error_codes::UPGRADE_REVERTED.into(),
        message: format!(
            "version {} was installed but the updater reverted to {}: {}",
            r.to_version,
            r.from_version,
            r.reason.as_deref().unwrap_or("no reason given")
        ),
    }
}
