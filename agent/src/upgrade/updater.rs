//! `flotilla-agent self-update apply`: the root updater, run by `flotilla-agent-updater.service`
//! whenever the agent leaves `<state_dir>/upgrade/request.json` (the path unit watches it).
//!
//! Steps, each logged to stderr (the journal):
//! 1. Move the request aside into `<updater_dir>/inflight.json` (root-only; the path unit then
//!    stops triggering on the request, and a crash leaves a record to resume from) and answer
//!    `accepted` in `result.json`. The request is read without following a link, as a regular
//!    file of at most 64 KiB; everything in the agent's `upgrade/` directory is handled through
//!    a handle opened without following links (`files::NoFollowDir`).
//! 2. Re-verify everything with the relay key the ROOT side trusts (`/etc/flotilla/relay.pub`,
//!    written by install.sh after checking its fingerprint; without it every upgrade is refused
//!    — agent.db is the agent's to write): the manifest's signature, that it names the
//!    requested version and this architecture, that the staged file lies in the staged
//!    directory, that systemd answers, and the version rule against the installed binary's
//!    `--version` (an unknown version counts as newer) — a downgrade (or the same version) is
//!    refused unless the request carries the relay-signed `agent.upgrade` command with
//!    `rollback: true` for exactly this manifest, addressed to this agent (the id in
//!    `<state_dir>/agent-id`, which the agent writes; agent.db is never opened), expired at most
//!    `ROLLBACK_GRACE_SECS` before the updater took it.
//! 3. Copy the installed binary to `<updater_dir>/flotilla-agent.previous`, then copy the staged
//!    binary next to the installed one, checking size and SHA-256 of the bytes written, and
//!    rename it over (atomic; see `files::install_binary`).
//! 4. Write `result.json` `applied`, remove a stale `confirmed`, `systemctl restart --no-block`.
//!    A restart that cannot be issued puts the previous binary back: `failed`.
//! 5. Watch every `poll` (1 s): success when `confirmed` holds the new version; revert when the
//!    deadline passes, `NRestarts` grew by 3 or more, or the unit is `failed` on two checks in a
//!    row — after one more look at `confirmed`. The reason names the trigger (`crash loop:`,
//!    `unit failed:`, `deadline:`).
//! 6. Revert: `result.json` `reverted` with the reason (written first, so an old binary that
//!    systemd starts in the next instant already finds the verdict), the previous binary swapped
//!    back in the same atomic way, `systemctl reset-failed`, `systemctl restart --no-block`.
//!    agent.db is left alone: a new build that migrated it left the undo scripts in it, and the
//!    previous binary runs them when it opens the file (`state.rs`, `downgrade`).
//!
//! Re-run after a crash: `inflight.json` records the stage reached (`accepted`, `applied`,
//! `reverting`). A re-run finishes it before looking at a new request: `accepted` starts over
//! (every step is idempotent; an installed binary that already is the new build counts as
//! swapped when the previous one was saved by this run); `applied` checks what is installed —
//! the new build: confirmed already, or restart the agent and watch again with a fresh
//! deadline; anything else: revert; `reverting` completes the revert. The path unit also
//! watches `inflight.json`, so the re-run happens by itself (at the latest after a reboot).
//!
//! Never from the build on trial: the unit runs `<updater_dir>/flotilla-agent.updater` when it
//! exists, a copy of the installed binary taken while no upgrade is in flight and refreshed
//! after `confirmed` (`--binary` names the installed one). A re-run after the swap therefore
//! runs the known-good updater, not the new build, which may not even start.
//!
//! Bounded retries: every run of an unfinished upgrade counts in `inflight.json` (`runs`), with
//! the last error. A run that fails fast while `inflight.json` exists is started again by the
//! path unit at once; after `MAX_RUNS` the record is moved aside (`inflight.json.gave-up-<ts>`),
//! `result.json` says `failed` with the last error, and the run exits 0, so the path unit never
//! reaches the service's start limit (were it reached anyway, `systemctl reset-failed
//! flotilla-agent-updater.path` re-arms it). Only one updater runs at a time (`flock` on
//! `<updater_dir>`).
//!
//! `<updater_dir>/inflight.json` (root, 0600):
//! `{"request": <request.json as the agent wrote it>, "stage": "accepted" | "applied" |
//! "reverting", "previous_size": N | null, "previous_sha256": "<hex>" | null,
//! "reason": "<why it is being reverted>" | null, "accepted_at": "<RFC 3339>", "runs": N,
//! "last_error": "<why the last run failed>" | null}`.

use super::files::{
    binary_version, create_dir, create_dir_owned, install_binary, lock_dir, read_small,
    remove_if_exists, remove_install_leftovers, sha256_file, sync_dir, write_atomic, InstallError,
    NoFollowDir, UpgradePaths, UpgradeRequest, UpgradeResult, UpgradeStatus, CONFIRMED_FILE,
    MAX_UPGRADE_FILE_BYTES, REQUEST_FILE, RESULT_FILE, STAGED_PREFIX,
};
use crate::agent_id::read_agent_id;
use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::command::{Audience, Command};
use flotilla_shared::release::{compare_versions, this_arch, ReleaseManifest};
use flotilla_shared::signing::PublicKey;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub const DEFAULT_UPDATER_DIR: &str = "/var/lib/flotilla-updater";
pub const DEFAULT_RELAY_KEY_FILE: &str = "/etc/flotilla/relay.pub";
pub const DEFAULT_SERVICE: &str = "flotilla-agent";
pub const DEFAULT_DEADLINE_SECS: u64 = 120;
/// The request being worked on, in the updater's directory.
pub const INFLIGHT_FILE: &str = "inflight.json";
/// The binary that was installed before the last upgrade.
pub const PREVIOUS_FILE: &str = "flotilla-agent.previous";
/// The known-good copy of the agent the unit runs the updater from (see the module docs).
pub const UPDATER_COPY_FILE: &str = "flotilla-agent.updater";
/// Restarts of the unit since the new build was started that count as a crash loop.
pub const CRASH_LOOP_RESTARTS: u64 = 3;
/// Runs of one unfinished upgrade before the updater gives up on it (the path unit starts the
/// service again at once after a failed run; the unit's start limit is higher than this).
pub const MAX_RUNS: u32 = 5;
/// `failed` must be seen on this many checks in a row (a restart whose stop runs into
/// `TimeoutStopSec` passes through `failed` on its way to the new start).
const FAILED_CHECKS: u32 = 2;
/// How long after its expiry a relay-signed rollback command is still accepted: the agent
/// checked the expiry when the command arrived, then downloaded (`download_timeout_secs`,
/// default 600 s, as long as the default TTL) and verified the build before asking.
pub const ROLLBACK_GRACE_SECS: i64 = 15 * 60;
/// The installed binary's `--version` must answer within this time.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `inflight.json`.
const MAX_INFLIGHT_BYTES: u64 = 1024 * 1024;

/// `self-update apply`'s settings.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The agent's state directory (holds `upgrade/`).
    pub state_dir: PathBuf,
    /// How long the new version has to reach the relay.
    pub deadline: Duration,
    /// The installed agent binary (resolved once, before anything is swapped).
    pub binary: PathBuf,
    /// Base64 relay public key trusted by root.
    pub relay_key_file: PathBuf,
    /// The agent's systemd unit.
    pub service: String,
    /// Root-only directory for `inflight.json` and the previous binary.
    pub updater_dir: PathBuf,
    /// How often the unit and `confirmed` are checked.
    pub poll: Duration,
    /// The systemctl program (`systemctl` from PATH).
    pub systemctl: PathBuf,
}

/// How one upgrade ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Confirmed {
        command_id: String,
        version: String,
    },
    Reverted {
        command_id: String,
        reason: String,
    },
    Refused {
        command_id: String,
        reason: String,
    },
    /// Could not be carried out (see `UpgradeStatus::Failed`).
    Failed {
        command_id: String,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    /// Moved aside; nothing installed yet (maybe the previous binary saved).
    Accepted,
    /// The new build is installed; watching it.
    Applied,
    /// Decided to revert (`reason`).
    Reverting,
}

/// `<updater_dir>/inflight.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Inflight {
    request: UpgradeRequest,
    stage: Stage,
    /// Size and SHA-256 of the previous binary once it was saved by this upgrade.
    #[serde(default)]
    previous_size: Option<u64>,
    #[serde(default)]
    previous_sha256: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    accepted_at: DateTime<Utc>,
    /// Runs of the updater that worked on this upgrade (this one included).
    #[serde(default)]
    runs: u32,
    /// Why the last run failed.
    #[serde(default)]
    last_error: Option<String>,
}

/// The unit's state as `systemctl show` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct UnitStatus {
    n_restarts: u64,
    active: String,
    sub: String,
}

/// Resolves the installed binary: `--binary` when given, else the running executable — once,
/// before anything is swapped (afterwards `/proc/self/exe` names a "(deleted)" file).
pub fn installed_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let exe = std::env::current_exe().context("cannot find the running executable")?;
            if exe.to_string_lossy().ends_with(" (deleted)") {
                anyhow::bail!(
                    "the running executable {} was replaced while running; pass --binary",
                    exe.display()
                );
            }
            exe
        }
    };
    std::fs::canonicalize(&path)
        .with_context(|| format!("cannot resolve the installed binary {}", path.display()))
}

/// Runs the updater: finishes an interrupted upgrade, then handles a new request. Errors only
/// when it could not act at all (the path unit then starts it again, `MAX_RUNS` times at most
/// for one upgrade).
pub fn apply(opts: &ApplyOptions) -> Result<Vec<Outcome>> {
    let updater = Updater::new(opts);
    create_dir(&opts.updater_dir, 0o700)
        .with_context(|| format!("cannot create {}", opts.updater_dir.display()))?;
    let _lock = lock_dir(&opts.updater_dir).map_err(|e| anyhow!("{e}"))?;
    // Updaters before the agent-id file copied agent.db (with the agent's private key) here to
    // read the id; one killed mid-copy left it behind.
    let _ = std::fs::remove_dir_all(opts.updater_dir.join("agent-db-copy"));
    for dest in [
        opts.binary.clone(),
        updater.previous_path(),
        updater.copy_path(),
    ] {
        for leftover in remove_install_leftovers(&dest) {
            info!(path = %leftover.display(), "removed the leftover of an interrupted copy");
        }
    }
    let mut outcomes = Vec::new();
    let inflight_path = updater.inflight_path();
    if inflight_path.exists() {
        let parsed = read_small(&inflight_path, MAX_INFLIGHT_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Inflight>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(mut inflight) => {
                inflight.runs += 1;
                info!(
                    command_id = inflight.request.command_id,
                    stage = ?inflight.stage,
                    to = inflight.request.to_version,
                    run = inflight.runs,
                    "resuming an upgrade a previous run of the updater did not finish"
                );
                if inflight.runs > MAX_RUNS {
                    outcomes.push(updater.give_up(inflight)?);
                } else {
                    updater.save(&inflight)?;
                    outcomes.push(updater.run_recorded(inflight)?);
                }
            }
            Err(e) => {
                let aside = inflight_path.with_extension(format!("bad-{}", Utc::now().timestamp()));
                error!(
                    path = %inflight_path.display(),
                    error = %e,
                    moved_to = %aside.display(),
                    "unreadable record of an unfinished upgrade; moving it aside"
                );
                std::fs::rename(&inflight_path, &aside)
                    .with_context(|| format!("cannot move {} aside", inflight_path.display()))?;
            }
        }
    } else {
        // Nothing on trial: the installed binary is the one in service.
        updater.refresh_copy();
    }
    if let Some(outcome) = updater.take_request()? {
        outcomes.push(outcome);
    }
    if outcomes.is_empty() {
        info!(state_dir = %opts.state_dir.display(), "no upgrade request; nothing to do");
    }
    Ok(outcomes)
}

/// An id as the relay issues them, safe to copy from an unreadable request into result.json.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

struct Updater<'a> {
    opts: &'a ApplyOptions,
    paths: UpgradePaths,
}

impl<'a> Updater<'a> {
    fn new(opts: &'a ApplyOptions) -> Self {
        Updater {
            opts,
            paths: UpgradePaths::new(&opts.state_dir),
        }
    }

    fn inflight_path(&self) -> PathBuf {
        self.opts.updater_dir.join(INFLIGHT_FILE)
    }

    fn previous_path(&self) -> PathBuf {
        self.opts.updater_dir.join(PREVIOUS_FILE)
    }

    fn copy_path(&self) -> PathBuf {
        self.opts.updater_dir.join(UPDATER_COPY_FILE)
    }

    /// The agent's `upgrade/` directory, opened without following a link; created (for the
    /// owner of the state directory) when missing.
    fn upgrade_dir(&self) -> Result<NoFollowDir> {
        let dir = &self.paths.dir;
        if std::fs::symlink_metadata(dir).is_err() {
            let owner = std::fs::symlink_metadata(&self.opts.state_dir)
                .map(|m| (m.uid(), m.gid()))
                .with_context(|| format!("cannot stat {}", self.opts.state_dir.display()))?;
            create_dir_owned(dir, 0o700, owner)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        NoFollowDir::open(dir).with_context(|| format!("cannot open {}", dir.display()))
    }

    /// Takes `request.json`: moves it aside into `inflight.json`, answers `accepted`, and runs
    /// it. An unreadable or malformed request is removed and refused.
    fn take_request(&self) -> Result<Option<Outcome>> {
        if std::fs::symlink_metadata(self.paths.request()).is_err() {
            return Ok(None);
        }
        let dir = self.upgrade_dir()?;
        let parsed = match dir.read_small(REQUEST_FILE, MAX_UPGRADE_FILE_BYTES) {
            Err(e) => Err((
                String::new(),
                format!("the upgrade request cannot be read: {e}"),
            )),
            Ok(bytes) => serde_json::from_slice::<UpgradeRequest>(&bytes).map_err(|e| {
                let command_id = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("command_id")?.as_str().map(str::to_string))
                    .filter(|id| plausible_id(id))
                    .unwrap_or_default();
                // Position and kind only: serde's message may quote the file's content.
                (
                    command_id,
                    format!(
                        "the upgrade request is malformed ({:?} error at line {} column {})",
                        e.classify(),
                        e.line(),
                        e.column()
                    )
                    .to_lowercase(),
                )
            }),
        };
        let request = match parsed {
            Ok(r) => r,
            Err((command_id, reason)) => {
                warn!(command_id, reason, "refusing the upgrade");
                dir.remove(REQUEST_FILE)
                    .with_context(|| format!("cannot remove {}", self.paths.request().display()))?;
                self.write_result(&command_id, "", "", UpgradeStatus::Refused, Some(&reason));
                return Ok(Some(Outcome::Refused { command_id, reason }));
            }
        };
        info!(
            command_id = request.command_id,
            from = request.from_version,
            to = request.to_version,
            rollback = request.rollback,
            "upgrade requested"
        );
        let inflight = Inflight {
            request,
            stage: Stage::Accepted,
            previous_size: None,
            previous_sha256: None,
            reason: None,
            accepted_at: Utc::now(),
            runs: 1,
            last_error: None,
        };
        self.save(&inflight)?;
        dir.remove(REQUEST_FILE)
            .with_context(|| format!("cannot remove {}", self.paths.request().display()))?;
        let r = &inflight.request;
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Accepted,
            None,
        );
        Ok(Some(self.run_recorded(inflight)?))
    }

    fn save(&self, inflight: &Inflight) -> Result<()> {
        let json = serde_json::to_vec_pretty(inflight)?;
        write_atomic(&self.inflight_path(), &json, 0o600)
            .with_context(|| format!("cannot write {}", self.inflight_path().display()))
    }

    fn done(&self) -> Result<()> {
        remove_if_exists(&self.inflight_path())
            .and_then(|()| sync_dir(&self.opts.updater_dir))
            .with_context(|| format!("cannot remove {}", self.inflight_path().display()))
    }

    /// Copies the installed binary to the known-good updater copy when it differs (logged,
    /// never fatal: the unit falls back to the installed binary, or keeps the older copy).
    fn refresh_copy(&self) {
        let copy = self.copy_path();
        let installed = match sha256_file(&self.opts.binary) {
            Ok(x) => x,
            Err(e) => {
                warn!(binary = %self.opts.binary.display(), error = %e, "cannot read the installed binary");
                return;
            }
        };
        if sha256_file(&copy).ok().as_ref() == Some(&installed) {
            return;
        }
        match install_binary(
            &self.opts.binary,
            &copy,
            Some((installed.0, installed.1.as_str())),
        ) {
            Ok(()) => info!(
                copy = %copy.display(),
                sha256 = installed.1,
                "the updater will run from this copy of the installed binary"
            ),
            Err(e) => {
                warn!(copy = %copy.display(), error = %e, "cannot refresh the updater's copy")
            }
        }
    }

    /// `run`, recording a failure in `inflight.json` for the next run.
    fn run_recorded(&self, inflight: Inflight) -> Result<Outcome> {
        let result = self.run(inflight);
        if let Err(e) = &result {
            let message = format!("{e:#}");
            error!(
                error = message,
                "this run of the updater failed; the next one resumes"
            );
            let recorded = read_small(&self.inflight_path(), MAX_INFLIGHT_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice::<Inflight>(&b).ok());
            if let Some(mut record) = recorded {
                record.last_error = Some(message);
                if let Err(e) = self.save(&record) {
                    warn!(error = format!("{e:#}"), "cannot record the failure");
                }
            }
        }
        result
    }

    fn run(&self, inflight: Inflight) -> Result<Outcome> {
        match inflight.stage {
            Stage::Accepted => self.accept(inflight),
            Stage::Applied => self.resume_applied(inflight),
            Stage::Reverting => {
                let reason = inflight
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the upgrade was being reverted".into());
                self.revert(inflight, reason)
            }
        }
    }

    /// After `MAX_RUNS` failed runs: the record moved aside, `failed` with the last error.
    fn give_up(&self, inflight: Inflight) -> Result<Outcome> {
        let r = &inflight.request;
        let installed = sha256_file(&self.opts.binary).map(|(_, s)| s).ok();
        let new_sha = serde_json::from_str::<ReleaseManifest>(&r.manifest.manifest)
            .ok()
            .map(|m| m.sha256);
        let state = if installed.is_some() && installed == new_sha {
            format!("{} stays installed", r.to_version)
        } else if installed.is_some() && installed == inflight.previous_sha256 {
            format!("{} is installed", r.from_version)
        } else if inflight.stage == Stage::Accepted {
            "nothing was installed".to_string()
        } else {
            format!("{} holds an unknown build", self.opts.binary.display())
        };
        let reason = format!(
            "the updater gave up after {} runs (last error: {}); {state}",
            MAX_RUNS,
            inflight.last_error.as_deref().unwrap_or("none recorded")
        );
        let aside = self.opts.updater_dir.join(format!(
            "{INFLIGHT_FILE}.gave-up-{}",
            Utc::now().timestamp()
        ));
        error!(command_id = r.command_id, reason, moved_to = %aside.display(), "giving up");
        std::fs::rename(self.inflight_path(), &aside)
            .and_then(|()| sync_dir(&self.opts.updater_dir))
            .with_context(|| format!("cannot move {} aside", self.inflight_path().display()))?;
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Failed,
            Some(&reason),
        );
        Ok(Outcome::Failed {
            command_id: r.command_id.clone(),
            reason,
        })
    }

    /// Verification, swap, restart, watch.
    fn accept(&self, mut inflight: Inflight) -> Result<Outcome> {
        let key = match self.root_key() {
            Ok(k) => k,
            Err(reason) => return self.refuse(inflight, reason),
        };
        let m = match self.verify(&inflight, &key) {
            Ok(m) => m,
            Err(reason) => return self.refuse(inflight, reason),
        };
        info!(
            to = m.version,
            sha256 = m.sha256,
            key = key.fingerprint(),
            "the request and its staged binary verify"
        );
        // Nothing is swapped unless systemd answers: a build that cannot be restarted into
        // would be reverted (and marked broken) for systemd's fault.
        if let Err(e) = self.unit_status() {
            return self.refuse(
                inflight,
                format!("systemd does not answer, so the agent could not be restarted: {e}"),
            );
        }
        let binary = &self.opts.binary;
        let (installed_size, installed_sha) = match sha256_file(binary) {
            Ok(x) => x,
            Err(e) => {
                return self.refuse(
                    inflight,
                    format!("cannot read the installed binary {}: {e}", binary.display()),
                )
            }
        };
        if installed_sha == m.sha256 {
            if inflight.previous_sha256.is_none() {
                return self.refuse(
                    inflight,
                    format!(
                        "build {} is already the installed binary {}",
                        m.version,
                        binary.display()
                    ),
                );
            }
            info!("the new build is already in place (resuming after an interruption)");
        } else {
            if let Err(reason) = self.check_version(&inflight.request, &m) {
                return self.refuse(inflight, reason);
            }
            let previous = self.previous_path();
            if let Err(e) = install_binary(
                binary,
                &previous,
                Some((installed_size, installed_sha.as_str())),
            ) {
                return self.refuse(
                    inflight,
                    format!(
                        "cannot keep a copy of the installed binary in {}: {e}",
                        previous.display()
                    ),
                );
            }
            info!(
                previous = %previous.display(),
                sha256 = installed_sha,
                "kept the installed binary"
            );
            inflight.previous_size = Some(installed_size);
            inflight.previous_sha256 = Some(installed_sha);
            self.save(&inflight)?;
            match install_binary(
                &inflight.request.binary,
                binary,
                Some((m.size, m.sha256.as_str())),
            ) {
                Ok(()) => {}
                Err(InstallError::Mismatch(why)) => {
                    return self.refuse(
                        inflight,
                        format!("the staged binary does not match the signed manifest: {why}"),
                    )
                }
                Err(InstallError::Io(why)) => {
                    return self.refuse(
                        inflight,
                        format!(
                            "cannot install the new binary at {}: {why}",
                            binary.display()
                        ),
                    )
                }
            }
            info!(binary = %binary.display(), version = m.version, "installed the new build");
        }
        self.upgrade_dir()?
            .remove(CONFIRMED_FILE)
            .with_context(|| {
                format!(
                    "cannot remove the stale {}",
                    self.paths.confirmed().display()
                )
            })?;
        inflight.stage = Stage::Applied;
        self.save(&inflight)?;
        let r = &inflight.request;
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Applied,
            None,
        );
        if let Err(e) = self.restart() {
            return self.restart_failed(inflight, e);
        }
        self.watch(inflight)
    }

    /// Re-run with the new build supposedly installed.
    fn resume_applied(&self, inflight: Inflight) -> Result<Outcome> {
        let m: ReleaseManifest = serde_json::from_str(&inflight.request.manifest.manifest)
            .context("the recorded manifest does not parse")?;
        let installed = sha256_file(&self.opts.binary).map(|(_, sha)| sha);
        if installed.as_deref().ok() != Some(m.sha256.as_str()) {
            return self.revert(
                inflight,
                format!(
                    "the updater was interrupted, and build {} is no longer the installed binary",
                    m.version
                ),
            );
        }
        if self.paths.read_confirmed().as_deref() == Some(inflight.request.to_version.as_str()) {
            return self.confirm(inflight);
        }
        if let Err(e) = self.restart() {
            return self.restart_failed(inflight, e);
        }
        self.watch(inflight)
    }

    /// The restart into the new build could not be issued: the previous binary goes back (the
    /// old process still runs it) and the result is `failed`, which does not mark the build
    /// broken.
    fn restart_failed(&self, inflight: Inflight, error: String) -> Result<Outcome> {
        let r = &inflight.request;
        let (Some(size), Some(sha)) = (inflight.previous_size, inflight.previous_sha256.as_deref())
        else {
            return self.finish_failed(
                &inflight,
                format!("cannot restart {}: {error}", self.opts.service),
            );
        };
        install_binary(&self.previous_path(), &self.opts.binary, Some((size, sha)))
            .map_err(|e| anyhow!("cannot put the previous binary back: {e}"))?;
        let reason = format!(
            "cannot restart {} into {} ({error}); the previous binary ({}) is installed again",
            self.opts.service, r.to_version, r.from_version
        );
        self.finish_failed(&inflight, reason)
    }

    fn finish_failed(&self, inflight: &Inflight, reason: String) -> Result<Outcome> {
        let r = &inflight.request;
        warn!(command_id = r.command_id, reason, "the upgrade failed");
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Failed,
            Some(&reason),
        );
        self.done()?;
        Ok(Outcome::Failed {
            command_id: r.command_id.clone(),
            reason,
        })
    }

    fn confirmed(&self, to: &str) -> bool {
        self.paths.read_confirmed().as_deref() == Some(to)
    }

    /// Waits for `confirmed`; reverts on deadline, crash loop or a failed unit, after looking
    /// at `confirmed` once more.
    fn watch(&self, inflight: Inflight) -> Result<Outcome> {
        let to = inflight.request.to_version.clone();
        let service = &self.opts.service;
        let started = Instant::now();
        let mut baseline: Option<u64> = None;
        let mut failed_checks = 0;
        let mut last = UnitStatus::default();
        info!(
            version = to,
            deadline_secs = self.opts.deadline.as_secs(),
            "watching the new version"
        );
        loop {
            if self.confirmed(&to) {
                return self.confirm(inflight);
            }
            let mut trigger = None;
            match self.unit_status() {
                Ok(status) => {
                    // A manual restart resets NRestarts: the baseline follows it down.
                    let base = baseline.map_or(status.n_restarts, |b| b.min(status.n_restarts));
                    baseline = Some(base);
                    let restarts = status.n_restarts - base;
                    failed_checks = if status.active == "failed" {
                        failed_checks + 1
                    } else {
                        0
                    };
                    if restarts >= CRASH_LOOP_RESTARTS {
                        trigger = Some(format!(
                            "crash loop: {service} restarted {restarts} times after {to} was \
                             installed (now {}/{})",
                            status.active, status.sub
                        ));
                    } else if failed_checks >= FAILED_CHECKS {
                        trigger = Some(format!(
                            "unit failed: {service} is {}/{} after {to} was installed (on \
                             {failed_checks} checks in a row)",
                            status.active, status.sub
                        ));
                    }
                    last = status;
                }
                Err(e) => warn!(error = e, "cannot read the agent unit's state"),
            }
            if trigger.is_none() && started.elapsed() >= self.opts.deadline {
                let state = if last.active.is_empty() {
                    format!("the state of {service} is unknown")
                } else {
                    format!("{service} was {}/{}", last.active, last.sub)
                };
                trigger = Some(format!(
                    "deadline: {to} did not reach the relay within {} s while {state} (it never \
                     got the relay's welcome; an unreachable relay looks the same)",
                    self.opts.deadline.as_secs()
                ));
            }
            if let Some(reason) = trigger {
                // The new version may have confirmed since the check above.
                if self.confirmed(&to) {
                    return self.confirm(inflight);
                }
                return self.revert(inflight, reason);
            }
            std::thread::sleep(self.opts.poll);
        }
    }

    fn confirm(&self, inflight: Inflight) -> Result<Outcome> {
        let r = &inflight.request;
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Confirmed,
            None,
        );
        self.done()?;
        info!(
            command_id = r.command_id,
            version = r.to_version,
            "the new version reached the relay; upgrade confirmed"
        );
        // The new build has proven itself: the next updater runs from it.
        self.refresh_copy();
        Ok(Outcome::Confirmed {
            command_id: r.command_id.clone(),
            version: r.to_version.clone(),
        })
    }

    /// Puts the previous binary back and restarts the agent.
    fn revert(&self, mut inflight: Inflight, reason: String) -> Result<Outcome> {
        warn!(
            command_id = inflight.request.command_id,
            reason, "reverting to the previous binary"
        );
        let previous = self.previous_path();
        let (Some(size), Some(sha)) = (inflight.previous_size, inflight.previous_sha256.clone())
        else {
            // This upgrade swapped nothing (a hand-made record): nothing to put back, and the
            // build was never tried, so it is not reported as reverted (which marks it broken).
            return self.refuse(inflight, reason);
        };
        if !previous.exists() {
            // Permanent: retrying cannot help.
            return self.finish_failed(
                &inflight,
                format!(
                    "cannot revert ({reason}): the previous binary {} is missing; {} stays \
                     installed",
                    previous.display(),
                    inflight.request.to_version
                ),
            );
        }
        inflight.stage = Stage::Reverting;
        inflight.reason = Some(reason.clone());
        self.save(&inflight)?;
        let r = &inflight.request;
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Reverted,
            Some(&reason),
        );
        let installed = sha256_file(&self.opts.binary).map(|(_, s)| s).ok();
        if installed.as_deref() != Some(sha.as_str()) {
            install_binary(&previous, &self.opts.binary, Some((size, sha.as_str())))
                .map_err(|e| anyhow!("cannot put the previous binary back: {e}"))?;
        }
        info!(
            binary = %self.opts.binary.display(),
            version = r.from_version,
            "the previous binary is installed again"
        );
        if let Err(e) = self.systemctl(&["reset-failed", &self.opts.service]) {
            warn!(error = e, "systemctl reset-failed failed");
        }
        if let Err(e) = self.restart() {
            warn!(
                error = e,
                "cannot restart the agent; systemd starts the previous binary at its next restart"
            );
        }
        self.done()?;
        Ok(Outcome::Reverted {
            command_id: r.command_id.clone(),
            reason,
        })
    }

    fn refuse(&self, inflight: Inflight, reason: String) -> Result<Outcome> {
        let r = &inflight.request;
        warn!(
            command_id = r.command_id,
            reason, "refusing the upgrade; nothing was changed"
        );
        self.write_result(
            &r.command_id,
            &r.from_version,
            &r.to_version,
            UpgradeStatus::Refused,
            Some(&reason),
        );
        self.done()?;
        Ok(Outcome::Refused {
            command_id: r.command_id.clone(),
            reason,
        })
    }

    /// The relay key root trusts (`relay.pub`, written by install.sh); the error is the
    /// refusal's reason. No fallback to the key in agent.db: the agent can write that file, and
    /// must not choose the key root verifies its request with.
    fn root_key(&self) -> Result<PublicKey, String> {
        let file = &self.opts.relay_key_file;
        let text = read_small(file, 4096).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} is missing: root trusts no relay key (install.sh writes it; run it \
                     again)",
                    file.display()
                )
            } else {
                format!("cannot read {}: {e}", file.display())
            }
        })?;
        PublicKey::from_base64(String::from_utf8_lossy(&text).trim()).map_err(|e| {
            format!(
                "{} does not hold a valid relay public key: {e}",
                file.display()
            )
        })
    }

    /// This agent's id, from the file the agent writes for this purpose (`<state_dir>/agent-id`,
    /// read without following a link; see `agent_id`): the updater never opens agent.db.
    fn agent_id(&self) -> Result<String, String> {
        read_agent_id(&self.opts.state_dir).map_err(|e| e.to_string())
    }

    /// Signature, consistency, architecture, staged path, and the rollback command.
    fn verify(&self, inflight: &Inflight, key: &PublicKey) -> Result<ReleaseManifest, String> {
        let r = &inflight.request;
        let m = r.manifest.verify(key).map_err(|e| {
            format!(
                "the release manifest does not verify with the relay key {}: {e}",
                key.fingerprint()
            )
        })?;
        if m.version != r.to_version || m.arch != r.arch {
            return Err(format!(
                "the request names {} for {} but the signed manifest is {} for {}",
                r.to_version, r.arch, m.version, m.arch
            ));
        }
        if m.arch != this_arch() {
            return Err(format!(
                "the build is for {}, this host is {}",
                m.arch,
                this_arch()
            ));
        }
        let staged_dir = std::fs::canonicalize(self.paths.staged_dir())
            .map_err(|e| format!("cannot resolve {}: {e}", self.paths.staged_dir().display()))?;
        let in_staged = r
            .binary
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            == Some(staged_dir)
            && r.binary
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(STAGED_PREFIX));
        if !in_staged {
            return Err(format!(
                "the staged binary {} is not in {}",
                r.binary.display(),
                self.paths.staged_dir().display()
            ));
        }
        if r.rollback {
            let signed = r
                .command
                .as_ref()
                .ok_or("a rollback request must carry the relay-signed command")?;
            let env = signed.verify(key).map_err(|e| {
                format!("the rollback command does not verify with the relay key: {e}")
            })?;
            let matches = env.id == r.command_id
                && matches!(&env.command, Command::AgentUpgrade(a)
                    if a.rollback && a.manifest == r.manifest);
            if !matches {
                return Err(
                    "the signed command is not a rollback to this manifest for this request".into(),
                );
            }
            let agent_id = self.agent_id()?;
            match &env.audience {
                Audience::Agent { agent_id: to } if *to == agent_id => {}
                other => {
                    return Err(format!(
                        "the rollback command is addressed to {other:?}, not to this agent \
                         ({agent_id})"
                    ))
                }
            }
            // Against root's own clock at acceptance, with a grace for the download.
            let limit = env.expires_at + chrono::Duration::seconds(ROLLBACK_GRACE_SECS);
            if limit <= inflight.accepted_at {
                return Err(format!(
                    "the rollback command expired at {} (more than {} s before the updater took \
                     the request)",
                    env.expires_at.to_rfc3339(),
                    ROLLBACK_GRACE_SECS
                ));
            }
        }
        Ok(m)
    }

    /// No downgrade (or reinstall of the same version) unless a verified rollback; an installed
    /// binary whose version cannot be told counts as newer (fail closed).
    fn check_version(&self, r: &UpgradeRequest, m: &ReleaseManifest) -> Result<(), String> {
        let installed = match binary_version(&self.opts.binary, VERSION_TIMEOUT) {
            Ok(v) => v,
            Err(e) if r.rollback => {
                info!(
                    error = %e,
                    "cannot tell the installed version; installing the relay-signed rollback"
                );
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "cannot tell the installed version, so cannot rule out a downgrade ({e}); \
                     only a relay-signed rollback is installed over it"
                ))
            }
        };
        match compare_versions(&m.version, &installed) {
            Ordering::Greater => Ok(()),
            Ordering::Less if r.rollback => {
                info!(
                    installed,
                    to = m.version,
                    "rolling back, as the relay signed"
                );
                Ok(())
            }
            Ordering::Less => Err(format!(
                "{} is older than the installed {installed}; the relay must send rollback",
                m.version
            )),
            Ordering::Equal => Err(format!(
                "{} is already the installed version ({})",
                m.version,
                self.opts.binary.display()
            )),
        }
    }

    /// Writes `result.json` atomically, owned by the owner of the upgrade directory (the
    /// agent), never following a link. A failure is logged, not fatal: the run still finishes
    /// (the agent then learns the outcome from its version, or reports the command
    /// interrupted).
    fn write_result(
        &self,
        command_id: &str,
        from_version: &str,
        to_version: &str,
        status: UpgradeStatus,
        reason: Option<&str>,
    ) {
        let result = UpgradeResult {
            command_id: command_id.to_string(),
            status,
            from_version: from_version.to_string(),
            to_version: to_version.to_string(),
            reason: reason.map(str::to_string),
            at: Utc::now(),
        };
        let written = (|| {
            let dir = self.upgrade_dir()?;
            let owner = dir.owner().context("cannot stat the upgrade directory")?;
            dir.write_atomic_owned(
                RESULT_FILE,
                &serde_json::to_vec_pretty(&result)?,
                0o640,
                Some(owner),
            )
            .with_context(|| format!("cannot write {}", self.paths.result().display()))
        })();
        match written {
            Ok(()) => info!(
                command_id,
                status = status.as_str(),
                "wrote the upgrade result"
            ),
            Err(e) => error!(
                command_id,
                status = status.as_str(),
                error = format!("{e:#}"),
                "cannot write the upgrade result; carrying on"
            ),
        }
    }

    fn systemctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Process::new(&self.opts.systemctl)
            .args(args)
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {} {}: {e}",
                    self.opts.systemctl.display(),
                    args.join(" ")
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed ({}): {}",
                self.opts.systemctl.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn restart(&self) -> Result<(), String> {
        self.systemctl(&["restart", "--no-block", &self.opts.service])?;
        info!(service = self.opts.service, "restarting the agent");
        Ok(())
    }

    fn unit_status(&self) -> Result<UnitStatus, String> {
        let out = self.systemctl(&[
            "show",
            "-p",
            "NRestarts",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            &self.opts.service,
        ])?;
        let mut status = UnitStatus::default();
        for line in out.lines() {
            match line.split_once('=') {
                Some(("NRestarts", v)) => status.n_restarts = v.trim().parse().unwrap_or(0),
                Some(("ActiveState", v)) => status.active = v.trim().to_string(),
                Some(("SubState", v)) => status.sub = v.trim().to_string(),
                _ => {}
            }
        }
        if status.active.is_empty() {
            return Err(format!(
                "systemctl show {} printed no ActiveState",
                self.opts.service
            ));
        }
        Ok(status)
    }
}
