//! Full-jitter exponential backoff: the n-th retry waits a uniformly random time between zero and
//! `min(cap, base * 2^n)`. Randomising the whole interval spreads a fleet's reconnects after a
//! relay restart instead of having every agent knock at the same moments.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The reconnect policy of the contract: 1 s growing to a 60 s cap.
    pub fn reconnect() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// The current upper bound of the delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        // 2^attempt saturates long before u32 overflow matters; cap the shift to stay in range.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Number of delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay: uniform in `[0, ceiling]`, then the ceiling doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling, flotilla_shared::ids::random_u64())
    }

    /// Back to the first step (after a link that stayed up long enough).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Maps a random `u64` onto `[0, ceiling]` at millisecond resolution.
fn jitter(ceiling: Duration, random: u64) -> Duration {
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(random % (ms + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_growing_bounds_and_cap() {
        let mut b = Backoff::reconnect();
        let expected_ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for secs in expected_ceilings {
            assert_eq!(b.ceiling(), Duration::from_secs(secs));
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(secs), "{d:?} > {secs}s");
        }
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::reconnect();
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_covers_the_whole_range() {
        let c = Duration::from_secs(2);
        assert_eq!(jitter(c, 0), Duration::ZERO);
        assert_eq!(jitter(c, 2000), c);
        assert_eq!(jitter(c, u64::MAX), Duration::from_millis(u64::MAX % 2001));
        assert_eq!(jitter(Duration::ZERO, 12345), Duration::ZERO);
        // Many draws are not all the same (the random source is real).
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let first = b.next_delay();
        assert!((0..50).any(|_| b.next_delay() != first));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        b.next_delay();
        assert_eq!(b.attempts(), u32::MAX);
    }
}
