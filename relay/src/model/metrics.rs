//! The agents' metrics history: which resolutions are kept, for how long, and which bucket a
//! heartbeat falls in. Every heartbeat written by the flusher is folded (as a running mean) into
//! the bucket of each resolution it falls in; retention drops buckets older than their
//! resolution's horizon. So the history of one agent is bounded whatever its heartbeat
//! interval: 289 fine and 721 coarse buckets in the window, and until the next retention sweep
//! (every 6 h) up to about 72 fine buckets more.

use chrono::{DateTime, Duration, Utc};

/// One kept resolution of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Width of a bucket.
    pub seconds: i64,
    /// How far back buckets are kept.
    pub keep: Duration,
    /// The `range` query value that reads this resolution.
    pub range: &'static str,
}

/// 5-minute points over 24 hours.
pub const FINE: Resolution = Resolution {
    seconds: 300,
    keep: Duration::hours(24),
    range: "24h",
};

/// Hourly points over 30 days.
pub const COARSE: Resolution = Resolution {
    seconds: 3600,
    keep: Duration::days(30),
    range: "30d",
};

pub const RESOLUTIONS: [Resolution; 2] = [FINE, COARSE];

impl Resolution {
    /// The `range` query value's resolution.
    pub fn of_range(range: &str) -> Option<Resolution> {
        RESOLUTIONS.into_iter().find(|r| r.range == range)
    }

    /// Start (unix seconds) of the bucket `at` falls in.
    pub fn bucket(&self, at: DateTime<Utc>) -> i64 {
        at.timestamp().div_euclid(self.seconds) * self.seconds
    }

    /// Buckets starting before this are older than the horizon at `now`.
    pub fn oldest_kept(&self, now: DateTime<Utc>) -> i64 {
        self.bucket(now - self.keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_their_width() {
        let at = DateTime::from_timestamp(1_800_000_123, 0).unwrap();
        assert_eq!(FINE.bucket(at), 1_800_000_000);
        assert_eq!(COARSE.bucket(at), 1_800_000_000);
        assert_eq!(COARSE.bucket(at + Duration::seconds(3600)), 1_800_003_600);
        assert_eq!(FINE.bucket(at + Duration::seconds(177)), 1_800_000_300);
        assert_eq!(FINE.bucket(at) % 300, 0);
        let before_epoch = DateTime::from_timestamp(-1, 0).unwrap();
        assert_eq!(FINE.bucket(before_epoch), -300);
    }

    #[test]
    fn horizons_bound_the_number_of_points() {
        let now = DateTime::from_timestamp(1_800_000_123, 0).unwrap();
        for r in RESOLUTIONS {
            let kept = (r.bucket(now) - r.oldest_kept(now)) / r.seconds + 1;
            assert!(
                kept <= r.keep.num_seconds() / r.seconds + 1,
                "{r:?}: {kept}"
            );
        }
        assert_eq!(Resolution::of_range("24h"), Some(FINE));
        assert_eq!(Resolution::of_range("30d"), Some(COARSE));
        assert_eq!(Resolution::of_range("7d"), None);
    }
}
