//! The TTL policy: how long a command lives when its request names no TTL. The relay's default
//! (10 minutes), except for the commands that can run longer than that:
//! - `container.update`: how long one may take decides the default TTL of an update command
//!   (and how long `flotilla update --wait` waits).
//! - `backup.run` and `backup.restore`: a dump of a large database or a restore can run for
//!   hours ([`LONG_BACKUP_TTL`]).
//!
//! The relay keeps an update's delivery open until its expiry plus `result_grace_secs` before it
//! ends it as `no_result`. The default command TTL (10 minutes) is shorter than an update with a
//! long health timeout can take, so an update asked for without a TTL gets at least
//! [`run_budget`] as its TTL (times the number of rounds a job's max-concurrency makes).

use flotilla_shared::command::{is_long, Command, LONG_BACKUP_TTL};
use flotilla_shared::update::{run_budget, ContainerUpdateArgs};

/// Longest command TTL accepted anywhere (7 days).
pub const MAX_COMMAND_TTL_SECS: u64 = 7 * 24 * 3600;

/// The TTL of `command` when the request names none, given the relay's default and the
/// number of rounds (`waves`) a job's max-concurrency makes (1 for a single command).
pub fn default_for(command: &Command, default_ttl_secs: u64, waves: u64) -> u64 {
    match command {
        Command::ContainerUpdate(args) => update_ttl_secs(args, default_ttl_secs, waves),
        c if is_long(c) => backup_ttl_secs(default_ttl_secs, waves),
        _ => default_ttl_secs,
    }
}

/// The TTL of an update command when the request names none: the relay's default, or the
/// update's [`run_budget`] times `waves` when that is longer (a job whose max-concurrency makes
/// its targets update in `waves` rounds one after another), at most [`MAX_COMMAND_TTL_SECS`].
pub fn update_ttl_secs(args: &ContainerUpdateArgs, default_ttl_secs: u64, waves: u64) -> u64 {
    let budget = run_budget(args).as_secs().saturating_mul(waves.max(1));
    default_ttl_secs.max(budget).min(MAX_COMMAND_TTL_SECS)
}

/// The TTL of a long backup command when the request names none: the relay's default, or
/// [`LONG_BACKUP_TTL`] times `waves` when that is longer (a job whose max-concurrency makes its
/// targets run in `waves` rounds one after another), at most [`MAX_COMMAND_TTL_SECS`].
pub fn backup_ttl_secs(default_ttl_secs: u64, waves: u64) -> u64 {
    let budget = LONG_BACKUP_TTL.as_secs().saturating_mul(waves.max(1));
    default_ttl_secs.max(budget).min(MAX_COMMAND_TTL_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shared::backup::{BackupListArgs, BackupRestoreArgs, BackupRunArgs};
    use flotilla_shared::update::{HealthSpec, UpdateStrategy};
    use std::time::Duration;

    fn args(health_timeout_secs: Option<u32>, stable_secs: Option<u32>) -> ContainerUpdateArgs {
        ContainerUpdateArgs {
            container: "web".into(),
            image: "reg/app:v2".into(),
            health: HealthSpec::Auto,
            health_timeout_secs,
            stable_secs,
            strategy: UpdateStrategy::StopFirst,
            allow_drift: false,
        }
    }

    #[test]
    fn budget_covers_both_health_gates_and_slack() {
        // Defaults: 120 s health timeout, 10 s stable window.
        assert_eq!(
            run_budget(&args(None, None)),
            Duration::from_secs(2 * 130 + 900)
        );
        assert_eq!(
            run_budget(&args(Some(3600), Some(60))),
            Duration::from_secs(2 * 3660 + 900)
        );
        // Longer than the relay's default TTL: the update's budget wins; a longer default stays.
        assert_eq!(update_ttl_secs(&args(None, None), 600, 1), 1160);
        assert_eq!(update_ttl_secs(&args(None, None), 7200, 1), 7200);
        // A job updating its targets in three rounds; never beyond the 7-day maximum.
        assert_eq!(update_ttl_secs(&args(None, None), 600, 3), 3 * 1160);
        assert_eq!(
            update_ttl_secs(&args(None, None), 600, 10_000),
            MAX_COMMAND_TTL_SECS
        );
    }

    #[test]
    fn run_and_restore_get_six_hours_unless_the_default_is_longer() {
        assert!(is_long(&Command::BackupRun(BackupRunArgs::default())));
        assert!(is_long(&Command::BackupRestore(BackupRestoreArgs {
            id: "bk_1".into(),
            into: None,
            database: None,
            force: false,
            ..Default::default()
        })));
        assert!(!is_long(&Command::BackupList(BackupListArgs::default())));
        assert_eq!(backup_ttl_secs(600, 1), 6 * 3600);
        assert_eq!(backup_ttl_secs(12 * 3600, 1), 12 * 3600);
        // A job running its targets in three rounds; never beyond the 7-day maximum.
        assert_eq!(backup_ttl_secs(600, 3), 18 * 3600);
        assert_eq!(backup_ttl_secs(600, 1000), MAX_COMMAND_TTL_SECS);
    }
}
