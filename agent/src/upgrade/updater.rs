//! `flotilla-agent self-update apply`: the root updater, run by `flotilla-agent-updater.service`
//! whenever the agent leaves `<state_dir>/upgrade/request.json` (the path unit watches it).
//!
//! Steps, each logged to stderr (the journal):
//! 1. Move the request aside into `<updater_dir>/inflight.json` (root-only; the path unit then
//!    stops triggering on the request, and a crash leaves a record to resume from).
//! 2. Re-verify everything with the relay key the ROOT side trusts (`/etc/flotilla/relay.pub`,
//!    written by install.sh after checking its fingerprint; only when that file is missing the
//!    key pinned in agent.db, which the agent itself can write): the manifest's signature, that
//!    it names the requested version and this architecture, that the staged file lies in the
//!    staged directory, and the version rule against the installed binary's `--version` — a
//!    downgrade (or the same version) is refused unless the request carries the relay-signed
//!    `agent.upgrade` command with `rollback: true` for exactly this manifest.
//! 3. Copy the installed binary to `<updater_dir>/flotilla-agent.previous`, then copy the staged
//!    binary next to the installed one, checking size and SHA-256 of the bytes written, and
//!    rename it over (atomic; see `files::install_binary`).
//! 4. Write `result.json` `applied`, remove a stale `confirmed`, `systemctl restart --no-block`.
//! 5. Watch every `poll` (1 s): success when `confirmed` holds the new version; revert when the
//!    deadline passes, `NRestarts` grew by 3 or more, or the unit is `failed`.
//! 6. Revert: `result.json` `reverted` with the reason (written first, so an old binary that
//!    systemd starts in the next instant already finds the verdict), the previous binary swapped
//!    back in the same atomic way, `systemctl reset-failed`, `systemctl restart --no-block`.
//!
//! Re-run after a crash: `inflight.json` records the stage reached (`accepted`, `applied`,
//! `reverting`). A re-run finishes it before looking at a new request: `accepted` starts over
//! (every step is idempotent; an installed binary that already is the new build counts as
//! swapped when the previous one was saved by this run); `applied` checks what is installed —
//! the new build: confirmed already, or restart the agent and watch again with a fresh
//! deadline; anything else: revert; `reverting` completes the revert. The path unit also
//! watches `inflight.json`, so the re-run happens by itself (at the latest after a reboot).
//!
//! `<updater_dir>/inflight.json` (root, 0600):
//! `{"request": <request.json as the agent wrote it>, "stage": "accepted" | "applied" |
//! "reverting", "previous_size": N | null, "previous_sha256": "<hex>" | null,
//! "reason": "<why it is being reverted>" | null, "accepted_at": "<RFC 3339>"}`.

use super::files::{
    binary_version, create_dir, install_binary, remove_if_exists, sha256_file, sync_dir,
    write_atomic, InstallError, UpgradePaths, UpgradeRequest, UpgradeResult, UpgradeStatus,
    STAGED_PREFIX,
};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::command::Command;
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
/// Restarts of the unit since the new build was started that count as a crash loop.
pub const CRASH_LOOP_RESTARTS: u64 = 3;
/// The installed binary's `--version` must answer within this time.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

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
    Confirmed { command_id: String, version: String },
    Reverted { command_id: String, reason: String },
    Refused { command_id: String, reason: String },
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
                bail!(
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
/// when it could not act at all.
pub fn apply(opts: &ApplyOptions) -> Result<Vec<Outcome>> {
    let updater = Updater::new(opts);
    create_dir(&opts.updater_dir, 0o700)
        .with_context(|| format!("cannot create {}", opts.updater_dir.display()))?;
    let mut outcomes = Vec::new();
    let inflight_path = updater.inflight_path();
    if inflight_path.exists() {
        let text = std::fs::read_to_string(&inflight_path)
            .with_context(|| format!("cannot read {}", inflight_path.display()))?;
        match serde_json::from_str::<Inflight>(&text) {
            Ok(inflight) => {
                info!(
                    command_id = inflight.request.command_id,
                    stage = ?inflight.stage,
                    to = inflight.request.to_version,
                    "resuming an upgrade a previous run of the updater did not finish"
                );
                outcomes.push(updater.run(inflight)?);
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
    }
    let request_path = updater.paths.request();
    if request_path.exists() {
        let text = std::fs::read_to_string(&request_path)
            .with_context(|| format!("cannot read {}", request_path.display()))?;
        match serde_json::from_str::<UpgradeRequest>(&text) {
            Ok(request) => {
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
                };
                updater.save(&inflight)?;
                std::fs::remove_file(&request_path)
                    .and_then(|()| sync_dir(&updater.paths.dir))
                    .with_context(|| format!("cannot remove {}", request_path.display()))?;
                outcomes.push(updater.run(inflight)?);
            }
            Err(e) => {
                let command_id = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("command_id")?.as_str().map(str::to_string))
                    .unwrap_or_default();
                let reason = format!("the upgrade request is malformed: {e}");
                warn!(command_id, reason, "refusing the upgrade");
                std::fs::remove_file(&request_path)
                    .with_context(|| format!("cannot remove {}", request_path.display()))?;
                updater.write_result(&command_id, "", "", UpgradeStatus::Refused, Some(&reason))?;
                outcomes.push(Outcome::Refused { command_id, reason });
            }
        }
    }
    if outcomes.is_empty() {
        info!(state_dir = %opts.state_dir.display(), "no upgrade request; nothing to do");
    }
    Ok(outcomes)
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

    /// Verification, swap, restart, watch.
    fn accept(&self, mut inflight: Inflight) -> Result<Outcome> {
        let key = match self.root_key() {
            Ok(k) => k,
            Err(reason) => return self.refuse(inflight, reason),
        };
        let m = match self.verify(&inflight.request, &key) {
            Ok(m) => m,
            Err(reason) => return self.refuse(inflight, reason),
        };
        info!(
            to = m.version,
            sha256 = m.sha256,
            key = key.fingerprint(),
            "the request and its staged binary verify"
        );
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
        remove_if_exists(&self.paths.confirmed()).with_context(|| {
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
        )?;
        self.restart();
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
        self.restart();
        self.watch(inflight)
    }

    /// Waits for `confirmed`; reverts on deadline, crash loop or a failed unit.
    fn watch(&self, inflight: Inflight) -> Result<Outcome> {
        let to = inflight.request.to_version.clone();
        let service = &self.opts.service;
        let started = Instant::now();
        let mut baseline: Option<u64> = None;
        let mut last = UnitStatus::default();
        info!(
            version = to,
            deadline_secs = self.opts.deadline.as_secs(),
            "watching the new version"
        );
        loop {
            if self.paths.read_confirmed().as_deref() == Some(to.as_str()) {
                return self.confirm(inflight);
            }
            if let Some(status) = self.unit_status() {
                // A manual restart resets NRestarts: the baseline follows it down.
                let base = baseline.map_or(status.n_restarts, |b| b.min(status.n_restarts));
                baseline = Some(base);
                let restarts = status.n_restarts - base;
                if restarts >= CRASH_LOOP_RESTARTS {
                    let reason = format!(
                        "{service} restarted {restarts} times after {to} was installed (crash \
                         loop; now {}/{})",
                        status.active, status.sub
                    );
                    return self.revert(inflight, reason);
                }
                if status.active == "failed" {
                    let reason = format!(
                        "{service} failed after {to} was installed ({}/{})",
                        status.active, status.sub
                    );
                    return self.revert(inflight, reason);
                }
                last = status;
            }
            if started.elapsed() >= self.opts.deadline {
                let state = if last.active.is_empty() {
                    "unknown".to_string()
                } else {
                    format!("{}/{}", last.active, last.sub)
                };
                let reason = format!(
                    "{to} did not reach the relay within {} s ({service} is {state})",
                    self.opts.deadline.as_secs()
                );
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
        )?;
        self.done()?;
        info!(
            command_id = r.command_id,
            version = r.to_version,
            "the new version reached the relay; upgrade confirmed"
        );
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
            bail!(
                "cannot revert: the previous binary {} is missing; {} stays installed",
                previous.display(),
                inflight.request.to_version
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
        )?;
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
        self.restart();
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
        )?;
        self.done()?;
        Ok(Outcome::Refused {
            command_id: r.command_id.clone(),
            reason,
        })
    }

    /// The relay key root trusts; the error is the refusal's reason.
    fn root_key(&self) -> Result<PublicKey, String> {
        let file = &self.opts.relay_key_file;
        match std::fs::read_to_string(file) {
            Ok(text) => PublicKey::from_base64(text.trim()).map_err(|e| {
                format!(
                    "{} does not hold a valid relay public key: {e}",
                    file.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(
                    file = %file.display(),
                    "no root-owned relay key; falling back to the key pinned in agent.db"
                );
                self.pinned_key()
            }
            Err(e) => Err(format!("cannot read {}: {e}", file.display())),
        }
    }

    /// The relay key pinned in agent.db, read-only; files SQLite creates on the way are given
    /// to the database's owner (a root-owned `-shm` would lock the agent out of its database).
    fn pinned_key(&self) -> Result<PublicKey, String> {
        let db = self.opts.state_dir.join(crate::state::DB_FILE);
        let owner = std::fs::metadata(&db)
            .map(|m| (m.uid(), m.gid()))
            .map_err(|e| format!("no relay key file and cannot read {}: {e}", db.display()))?;
        let read = (|| {
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.query_row(
                "SELECT relay_public_key FROM identity WHERE id = 1",
                [],
                |r| r.get::<_, String>(0),
            )
        })();
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", db.display()));
            if let Ok(m) = std::fs::metadata(&side) {
                if (m.uid(), m.gid()) != owner {
                    let _ = std::os::unix::fs::chown(&side, Some(owner.0), Some(owner.1));
                }
            }
        }
        let b64 = read.map_err(|e| {
            format!(
                "no relay key file and cannot read the pinned key from {}: {e}",
                db.display()
            )
        })?;
        PublicKey::from_base64(&b64)
            .map_err(|e| format!("the relay key pinned in {} is invalid: {e}", db.display()))
    }

    /// Signature, consistency, architecture, staged path, and the rollback command.
    fn verify(&self, r: &UpgradeRequest, key: &PublicKey) -> Result<ReleaseManifest, String> {
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
            if env.expires_at <= Utc::now() {
                return Err(format!(
                    "the rollback command expired at {}",
                    env.expires_at.to_rfc3339()
                ));
            }
        }
        Ok(m)
    }

    /// No downgrade (or reinstall of the same version) unless a verified rollback.
    fn check_version(&self, r: &UpgradeRequest, m: &ReleaseManifest) -> Result<(), String> {
        let installed = match binary_version(&self.opts.binary, VERSION_TIMEOUT) {
            Ok(v) => v,
            Err(e) => {
                warn!(
                    error = e,
                    "cannot tell the installed version; installing the requested build"
                );
                return Ok(());
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

    /// Writes `result.json` atomically, owned by the owner of the upgrade directory (the agent).
    fn write_result(
        &self,
        command_id: &str,
        from_version: &str,
        to_version: &str,
        status: UpgradeStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        let result = UpgradeResult {
            command_id: command_id.to_string(),
            status,
            from_version: from_version.to_string(),
            to_version: to_version.to_string(),
            reason: reason.map(str::to_string),
            at: Utc::now(),
        };
        let path = self.paths.result();
        if !self.paths.dir.exists() {
            // Normally the agent's own; recreated for it when missing.
            create_dir(&self.paths.dir, 0o700)
                .with_context(|| format!("cannot create {}", self.paths.dir.display()))?;
            if let Ok(m) = std::fs::metadata(&self.opts.state_dir) {
                let _ = std::os::unix::fs::chown(&self.paths.dir, Some(m.uid()), Some(m.gid()));
            }
        }
        let owner = std::fs::metadata(&self.paths.dir)
            .map(|m| (m.uid(), m.gid()))
            .with_context(|| format!("cannot stat {}", self.paths.dir.display()))?;
        super::files::write_atomic_owned(
            &path,
            &serde_json::to_vec_pretty(&result)?,
            0o640,
            Some(owner),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        info!(
            command_id,
            status = status.as_str(),
            "wrote the upgrade result"
        );
        Ok(())
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

    fn restart(&self) {
        match self.systemctl(&["restart", "--no-block", &self.opts.service]) {
            Ok(_) => info!(service = self.opts.service, "restarting the agent"),
            Err(e) => warn!(error = e, "cannot restart the agent"),
        }
    }

    fn unit_status(&self) -> Option<UnitStatus> {
        let out = match self.systemctl(&[
            "show",
            "-p",
            "NRestarts",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            &self.opts.service,
        ]) {
            Ok(out) => out,
            Err(e) => {
                warn!(error = e, "cannot read the agent unit's state");
                return None;
            }
        };
        let mut status = UnitStatus::default();
        for line in out.lines() {
            match line.split_once('=') {
                Some(("NRestarts", v)) => status.n_restarts = v.trim().parse().unwrap_or(0),
                Some(("ActiveState", v)) => status.active = v.trim().to_string(),
                Some(("SubState", v)) => status.sub = v.trim().to_string(),
                _ => {}
            }
        }
        Some(status)
    }
}
