//! `container.update` on the relay's side: how long one may take, which decides the default TTL
//! of an update command and how long `flotilla update --wait` waits.
//!
//! The relay keeps an update's delivery open until its expiry plus `result_grace_secs` before it
//! ends it as `no_result`. The default command TTL (10 minutes) is shorter than an update with a
//! long health timeout can take, so an update asked for without a TTL gets at least
//! [`run_budget`] as its TTL (times the number of rounds a job's max-concurrency makes).

use crate::config::MAX_COMMAND_TTL_SECS;
use flotilla_shared::update::{run_budget, ContainerUpdateArgs};

/// The TTL of an update command when the request names none: the relay's default, or the
/// update's [`run_budget`] times `waves` when that is longer (a job whose max-concurrency makes
/// its targets update in `waves` rounds one after another), at most [`MAX_COMMAND_TTL_SECS`].
pub fn default_ttl_secs(args: &ContainerUpdateArgs, default_ttl_secs: u64, waves: u64) -> u64 {
    let budget = run_budget(args).as_secs().saturating_mul(waves.max(1));
    default_ttl_secs.max(budget).min(MAX_COMMAND_TTL_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(default_ttl_secs(&args(None, None), 600, 1), 1160);
        assert_eq!(default_ttl_secs(&args(None, None), 7200, 1), 7200);
        // A job updating its targets in three rounds; never beyond the 7-day maximum.
        assert_eq!(default_ttl_secs(&args(None, None), 600, 3), 3 * 1160);
        assert_eq!(
            default_ttl_secs(&args(None, None), 600, 10_000),
            MAX_COMMAND_TTL_SECS
        );
    }
}
