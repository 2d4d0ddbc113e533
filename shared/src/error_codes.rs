//! Error codes an agent (or the relay on its behalf) reports in command results: the stable,
//! machine-readable strings of `ErrorInfo::code`. Also reachable as `command::error_codes`.

pub const BAD_SIGNATURE: &str = "bad_signature";
pub const MALFORMED: &str = "malformed_command";
pub const WRONG_AUDIENCE: &str = "wrong_audience";
pub const EXPIRED: &str = "expired";
pub const NOT_YET_VALID: &str = "not_yet_valid";
pub const POLICY: &str = "policy_denied";
pub const NO_SUCH_CONTAINER: &str = "no_such_container";
pub const BUSY: &str = "container_busy";
pub const DOCKER: &str = "docker_error";
pub const INVALID_ARGS: &str = "invalid_args";
/// `container.update` refused: the container is not running (created, exited, dead); a
/// rollback would leave it running, so stopped containers are not updated.
pub const NOT_RUNNING: &str = "container_not_running";
/// The command was running when the agent process stopped; it is not run again (it may or
/// may not have taken effect), so the operator decides.
pub const INTERRUPTED: &str = "interrupted";
/// The output does not fit in one frame (max_frame_bytes).
pub const RESULT_TOO_LARGE: &str = "result_too_large";
/// `container.update`: the new container failed and the old one runs again.
pub const UPDATE_ROLLED_BACK: &str = "update_rolled_back";
/// `container.update`: nothing was changed (pull failed, refused, ...).
pub const UPDATE_FAILED_UNCHANGED: &str = "update_failed_unchanged";
/// `container.update`: the new container failed and so did the old one on the way back.
pub const ROLLBACK_FAILED: &str = "rollback_failed";
/// `backup.*`: no backup job or backup with that name or id.
pub const NO_SUCH_BACKUP: &str = "no_such_backup";
/// `backup.run`: at least one database failed (the output has every database's outcome).
pub const BACKUP_FAILED: &str = "backup_failed";
/// `backup.verify`: a check failed (the output lists them).
pub const VERIFY_FAILED: &str = "verify_failed";
/// `backup.restore`: the target database holds data and `force` was not given.
pub const RESTORE_REFUSED: &str = "restore_refused";
/// `backup.restore`: the restore ran and failed.
pub const RESTORE_FAILED: &str = "restore_failed";
/// `agent.upgrade` refused before anything changed: wrong architecture, a downgrade without
/// `rollback`, a size, SHA-256 or signature mismatch, a failed `--version` smoke test.
pub const UPGRADE_REFUSED: &str = "upgrade_refused";
/// `agent.upgrade` could not be carried out (download failed, no updater installed, the
/// updater did not pick the request up); the old version still runs.
pub const UPGRADE_FAILED: &str = "upgrade_failed";
/// The new version was installed but crash-looped or did not reach the relay in time; the
/// updater restored the previous binary. The relay marks the build broken.
pub const UPGRADE_REVERTED: &str = "upgrade_reverted";
