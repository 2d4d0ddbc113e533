//! The files the agent and the root updater exchange under `<state_dir>/upgrade/`, and the file
//! operations both sides need: atomic writes, the SHA-256 of a file, the atomic replace-in-place
//! of a binary and the `--version` smoke test.
//!
//! ```text
//! <state_dir>/upgrade/staged/flotilla-agent-<version>   verified download (agent, 0755)
//! <state_dir>/upgrade/request.json                      UpgradeRequest (agent, written last)
//! <state_dir>/upgrade/result.json                       UpgradeResult (updater)
//! <state_dir>/upgrade/confirmed                         the version the new agent runs (agent)
//! ```

use chrono::{DateTime, Utc};
use flotilla_shared::command::SignedCommand;
use flotilla_shared::release::SignedManifest;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

/// Directory under the state directory.
pub const UPGRADE_DIR: &str = "upgrade";
pub const REQUEST_FILE: &str = "request.json";
pub const RESULT_FILE: &str = "result.json";
pub const CONFIRMED_FILE: &str = "confirmed";
pub const STAGED_DIR: &str = "staged";
/// File name prefix of staged binaries (`flotilla-agent-<version>`).
pub const STAGED_PREFIX: &str = "flotilla-agent-";

/// Largest `request.json` / `result.json` either side reads.
pub const MAX_UPGRADE_FILE_BYTES: u64 = 64 * 1024;
/// How long one run of the updater may take at most (`TimeoutStartSec=10min` of
/// flotilla-agent-updater.service): the agent waits this long for `applied`/`refused`/`failed`
/// after the updater answered `accepted`.
pub const UPDATER_LIMIT: Duration = Duration::from_secs(600);

/// Paths of the upgrade files of one state directory.
#[derive(Clone, Debug)]
pub struct UpgradePaths {
    /// `<state_dir>/upgrade`.
    pub dir: PathBuf,
}

impl UpgradePaths {
    pub fn new(state_dir: &Path) -> UpgradePaths {
        UpgradePaths {
            dir: state_dir.join(UPGRADE_DIR),
        }
    }

    pub fn request(&self) -> PathBuf {
        self.dir.join(REQUEST_FILE)
    }

    pub fn result(&self) -> PathBuf {
        self.dir.join(RESULT_FILE)
    }

    pub fn confirmed(&self) -> PathBuf {
        self.dir.join(CONFIRMED_FILE)
    }

    pub fn staged_dir(&self) -> PathBuf {
        self.dir.join(STAGED_DIR)
    }

    /// Where the verified download of `version` is kept.
    pub fn staged(&self, version: &str) -> PathBuf {
        self.staged_dir().join(format!("{STAGED_PREFIX}{version}"))
    }

    /// Reads `result.json`; `None` when it is missing or unreadable (logged by the caller's
    /// context: a half-written file cannot exist, it is replaced atomically).
    pub fn read_result(&self) -> Option<UpgradeResult> {
        let bytes = read_small(&self.result(), MAX_UPGRADE_FILE_BYTES).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The version written to `confirmed`, trimmed (a link or anything but a small regular
    /// file counts as missing).
    pub fn read_confirmed(&self) -> Option<String> {
        read_small(&self.confirmed(), 256)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
    }
}

/// `request.json`: what the agent asks the root updater to install. Written last, atomically,
/// after the staged binary was fully verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    pub command_id: String,
    /// The version the requesting agent runs.
    pub from_version: String,
    pub to_version: String,
    pub arch: String,
    /// The staged binary (inside `<state_dir>/upgrade/staged/`).
    pub binary: PathBuf,
    /// The relay-signed manifest; the updater verifies it again with the key it trusts.
    pub manifest: SignedManifest,
    pub rollback: bool,
    /// The relay-signed command, so the updater can check that a rollback was really asked for.
    #[serde(default)]
    pub command: Option<SignedCommand>,
    pub requested_at: DateTime<Utc>,
}

/// What the updater reports in `result.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStatus {
    /// The updater took the request (moved it aside) and is verifying and installing it; it
    /// answers `applied`, `refused` or `failed` within its own limit (`UPDATER_LIMIT`).
    Accepted,
    /// The new binary is installed and the agent is being restarted.
    Applied,
    /// The new version reached the relay (it wrote `confirmed`).
    Confirmed,
    /// The new version did not come up; the previous binary is installed again.
    Reverted,
    /// Nothing was changed (verification failed, a downgrade without rollback, ...).
    Refused,
    /// The updater could not carry the upgrade out (systemd did not answer, the restart could
    /// not be issued, it gave up after repeated failures); the reason says what is installed.
    /// Not a verdict on the build: the relay does not mark it broken.
    Failed,
}

impl UpgradeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStatus::Accepted => "accepted",
            UpgradeStatus::Applied => "applied",
            UpgradeStatus::Confirmed => "confirmed",
            UpgradeStatus::Reverted => "reverted",
            UpgradeStatus::Refused => "refused",
            UpgradeStatus::Failed => "failed",
        }
    }
}

/// `result.json`, written (atomically) by the updater.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeResult {
    pub command_id: String,
    pub status: UpgradeStatus,
    pub from_version: String,
    pub to_version: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// Creates `dir` (and its parents) with mode `mode` for what this call creates.
pub fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode);
    builder.create(dir)
}

/// fsyncs a directory, so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A temporary name next to `path`, unique to this process.
fn temp_next_to(path: &Path, tag: &str) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?
        .to_string_lossy()
        .into_owned();
    let nanos = Utc::now().timestamp_subsec_nanos();
    Ok(path.with_file_name(format!(".{name}.{tag}-{}-{nanos}", std::process::id())))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (mode `mode`),
/// fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, bytes, mode, None)
}

/// `write_atomic`, the file given to `owner` (uid, gid) before it takes its name, so readers
/// never see it with the wrong owner.
pub fn write_atomic_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let tmp = temp_next_to(path, "tmp")?;
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_of(path))
}

/// Removes a file; a missing one is fine.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Incremental SHA-256 with a byte count.
pub struct Sha256 {
    ctx: ring::digest::Context,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }
}

impl Sha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lower-case hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.ctx.finish().as_ref())
    }
}

/// Opens a regular file without following a symbolic link at `path` (`O_NOFOLLOW`) and without
/// blocking on a FIFO or device (`O_NONBLOCK`, harmless for a regular file); anything but a
/// regular file is refused after opening (`fstat`), so there is no lstat-then-open race.
pub fn open_regular(path: &Path) -> io::Result<fs::File> {
    let fd = rustix::fs::open(path, regular_flags(), Mode::empty())
        .map_err(|e| nofollow_error(path, e))?;
    regular_file(fd, path)
}

fn regular_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

fn nofollow_error(path: &Path, e: rustix::io::Errno) -> io::Error {
    if e == rustix::io::Errno::LOOP {
        io::Error::other(format!("{} is a symbolic link", path.display()))
    } else {
        io::Error::from(e)
    }
}

fn regular_file(fd: OwnedFd, path: &Path) -> io::Result<fs::File> {
    let f = fs::File::from(fd);
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

pub fn read_capped(f: fs::File, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A directory someone else controls (the agent's `upgrade/`), opened once without following a
/// symbolic link; the root updater creates, reads, renames and removes files in it only
/// relative to this handle, never following links (`openat`/`renameat`/`unlinkat` with
/// `O_NOFOLLOW`/`O_EXCL`), so swapping the directory or a file for a link cannot redirect it.
pub struct NoFollowDir {
    dir: fs::File,
    path: PathBuf,
}

impl NoFollowDir {
    pub fn open(path: &Path) -> io::Result<NoFollowDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                io::Error::other(format!("{} is not a directory (a link?)", path.display()))
            } else {
                io::Error::from(e)
            }
        })?;
        Ok(NoFollowDir {
            dir: fs::File::from(fd),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (uid, gid) of the directory.
    pub fn owner(&self) -> io::Result<(u32, u32)> {
        let m = self.dir.metadata()?;
        Ok((m.uid(), m.gid()))
    }

    /// Whether `name` exists in the directory (a link counts; it is not followed).
    pub fn exists(&self, name: &str) -> bool {
        rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Reads the regular file `name` (not a link, not a FIFO), at most `limit` bytes.
    pub fn read_small(&self, name: &str, limit: u64) -> io::Result<Vec<u8>> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(&self.dir, name, regular_flags(), Mode::empty())
            .map_err(|e| nofollow_error(&path, e))?;
        read_capped(regular_file(fd, &path)?, &path, limit)
    }

    /// Writes `name` atomically (a new temporary file, `O_EXCL`, handed to `owner` before it
    /// takes its name; fsync; rename; fsync of the directory).
    pub fn write_atomic_owned(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let tmp = format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            Utc::now().timestamp_subsec_nanos()
        );
        let written = (|| {
            let fd = rustix::fs::openat(
                &self.dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )?;
            let mut f = fs::File::from(fd);
            if let Some((uid, gid)) = owner {
                rustix::fs::fchown(
                    &f,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )?;
            }
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, name)?;
            Ok::<(), io::Error>(())
        })();
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        self.dir.sync_all()
    }

    /// Renames `from` to `to` inside the directory (links are renamed, not followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.dir, from, &self.dir, to)?;
        self.dir.sync_all()
    }

    /// Removes `name`; a missing one is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Err(e) if e != rustix::io::Errno::NOENT => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Creates `dir` (one level, mode `mode`) for `owner` without following a link at its place:
/// `lchown`, so a link swapped in meanwhile is what changes owner, not its target.
pub fn create_dir_owned(dir: &Path, mode: u32, owner: (u32, u32)) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    std::os::unix::fs::lchown(dir, Some(owner.0), Some(owner.1))
}

/// An exclusive `flock` on `dir`, held while the returned file is open; an error when another
/// process holds it.
pub fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let f = fs::File::open(dir)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            io::Error::other(format!(
                "{} is locked by another flotilla-agent self-update run",
                dir.display()
            ))
        } else {
            io::Error::from(e)
        }
    })?;
    Ok(f)
}

/// Reads a small regular file (see `open_regular`) of at most `limit` bytes.
pub fn read_small(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_capped(open_regular(path)?, path, limit)
}

/// Removes the temporary files an interrupted `install_binary(_, dest, _)` leaves next to
/// `dest` (`.<name>.new-<pid>-<ns>`); returns the ones removed.
pub fn remove_install_leftovers(dest: &Path) -> Vec<PathBuf> {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let prefix = format!(".{name}.new-");
    let Ok(entries) = fs::read_dir(parent_of(dest)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix)
            && fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

/// Size and SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = open_regular(path)?;
    let mut hash = Sha256::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let len = hash.len();
    Ok((len, hash.finish()))
}

/// Why installing a binary failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The copied bytes are not the expected ones; nothing was replaced.
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Io(String),
}

/// Replaces `dest` with a copy of `src` in place, atomically: the bytes are copied into a
/// temporary file in `dest`'s directory (hashed on the way), checked against `expect`
/// (size, sha256) when given, made mode 0755, fsynced and renamed over `dest`; then the
/// directory is fsynced. At every moment `dest` is either the old file or the complete new one.
///
/// This is the replace-in-place of the `self-replace` crate (which `self_update` uses), done here
/// rather than through that crate because the updater needs it for a path other than the
/// running executable (`--binary`, and the revert after a swap, when `current_exe()` already
/// resolves to a "(deleted)" file), wants the copy verified byte for byte as it is written (the
/// staged file lives in a directory the unprivileged agent can write), and fsyncs the file and
/// the directory, which `self_replace` does not.
pub fn install_binary(
    src: &Path,
    dest: &Path,
    expect: Option<(u64, &str)>,
) -> Result<(), InstallError> {
    let io_err = |what: &str, e: io::Error| InstallError::Io(format!("{what}: {e}"));
    let mut input = open_regular(src).map_err(|e| io_err(&format!("open {}", src.display()), e))?;
    let tmp = temp_next_to(dest, "new").map_err(|e| io_err("temporary name", e))?;
    let copied = (|| {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&tmp)
            .map_err(|e| io_err(&format!("create {}", tmp.display()), e))?;
        let mut hash = Sha256::default();
        let mut buf = vec![0u8; 64 * 1024];
        let limit = expect.map(|(size, _)| size);
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| io_err(&format!("read {}", src.display()), e))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            if let Some(limit) = limit {
                if hash.len() > limit {
                    return Err(InstallError::Mismatch(format!(
                        "{} is larger than the signed manifest's {limit} bytes",
                        src.display()
                    )));
                }
            }
            out.write_all(&buf[..n])
                .map_err(|e| io_err(&format!("write {}", tmp.display()), e))?;
        }
        let len = hash.len();
        let sha = hash.finish();
        if let Some((size, want)) = expect {
            if len != size {
                return Err(InstallError::Mismatch(format!(
                    "{} is {len} bytes, the signed manifest says {size}",
                    src.display()
                )));
            }
            if sha != want {
                return Err(InstallError::Mismatch(format!(
                    "sha256 of {} is {sha}, the signed manifest says {want}",
                    src.display()
                )));
            }
        }
        out.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(|e| io_err(&format!("chmod {}", tmp.display()), e))?;
        out.sync_all()
            .map_err(|e| io_err(&format!("fsync {}", tmp.display()), e))?;
        drop(out);
        fs::rename(&tmp, dest).map_err(|e| {
            io_err(
                &format!("rename {} over {}", tmp.display(), dest.display()),
                e,
            )
        })
    })();
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_of(dest)).map_err(|e| io_err("fsync of the binary's directory", e))
}

flotilla_shared::message_error!(
    /// A binary whose `--version` did not answer as an agent build does.
    pub VersionCheckFailed
);

/// Runs `<binary> --version` (at most `timeout`) and returns the version it prints: the last
/// word of its first line (`flotilla-agent 0.2.0` → `0.2.0`). The error names what went wrong.
pub fn binary_version(binary: &Path, timeout: Duration) -> Result<String, VersionCheckFailed> {
    binary_version_message(binary, timeout).map_err(VersionCheckFailed)
}

fn binary_version_message(binary: &Path, timeout: Duration) -> Result<String, String> {
    let mut attempts = 0;
    let mut child = loop {
        let spawned = Process::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(c) => break c,
            // ETXTBSY: another thread's fork may briefly hold a write handle of the file we
            // just wrote; it goes away when that child execs.
            Err(e) if e.raw_os_error() == Some(26) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("cannot run {} --version: {e}", binary.display())),
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --version did not finish within {} s",
                    binary.display(),
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(format!(
                    "cannot wait for {} --version: {e}",
                    binary.display()
                ))
            }
        }
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(4096).read_to_end(&mut out);
    }
    let text = String::from_utf8_lossy(&out);
    if !status.success() {
        let mut err = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            let _ = stderr.take(1024).read_to_end(&mut err);
        }
        return Err(format!(
            "{} --version failed ({status}): {}",
            binary.display(),
            String::from_utf8_lossy(&err).trim()
        ));
    }
    let line = text.lines().next().unwrap_or("").trim();
    match line.split_whitespace().last() {
        Some(v) => Ok(v.to_string()),
        None => Err(format!("{} --version printed nothing", binary.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "flotilla-upgrade-files-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        create_dir(&d, 0o700).unwrap();
        d
    }

    #[test]
    fn install_replaces_atomically_and_refuses_mismatches() {
        let dir = temp_dir();
        let src = dir.join("new");
        let dest = dir.join("installed");
        fs::write(&src, b"new bytes").unwrap();
        fs::write(&dest, b"old bytes").unwrap();
        let (size, sha) = sha256_file(&src).unwrap();
        assert_eq!(size, 9);

        // A wrong hash: nothing replaced, no temporary file left behind.
        let e = install_binary(&src, &dest, Some((size, &"0".repeat(64)))).unwrap_err();
        assert!(matches!(e, InstallError::Mismatch(_)), "{e}");
        assert!(e.to_string().contains(&sha), "{e}");
        let e = install_binary(&src, &dest, Some((size - 1, &sha))).unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        assert_eq!(fs::read(&dest).unwrap(), b"old bytes");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

        install_binary(&src, &dest, Some((size, &sha))).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new bytes");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

        // A symbolic link is not followed.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        assert!(install_binary(&link, &dest, None).is_err());
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn atomic_writes_and_version_of_a_script() {
        let dir = temp_dir();
        let f = dir.join("result.json");
        write_atomic(&f, b"one", 0o640).unwrap();
        write_atomic(&f, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );

        let script = dir.join("fake-agent");
        fs::write(&script, "#!/bin/sh\necho \"flotilla-agent 9.9.9\"\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            binary_version(&script, Duration::from_secs(5)).unwrap(),
            "9.9.9"
        );
        let slow = dir.join("slow-agent");
        fs::write(&slow, "#!/bin/sh\nsleep 5\n").unwrap();
        fs::set_permissions(&slow, fs::Permissions::from_mode(0o755)).unwrap();
        let e = binary_version(&slow, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        let failing = dir.join("failing-agent");
        fs::write(&failing, "#!/bin/sh\necho boom >&2\nexit 3\n").unwrap();
        fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).unwrap();
        let e = binary_version(&failing, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("boom"), "{e}");
        fs::remove_dir_all(dir).ok();
    }
}
