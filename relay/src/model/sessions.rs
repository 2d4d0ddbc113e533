//! Dashboard sign-in sessions: when one is still valid and when its last use is worth writing.
//! Pure: the store keeps the rows, the web adapter issues and checks the cookie.

use chrono::{DateTime, Duration, Utc};

/// A session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::hours(12);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::days(7);
/// A request refreshes a session's last use only when the stored one is older than this, so
/// a page and its live updates do not write a row per request.
pub const TOUCH_INTERVAL: Duration = Duration::seconds(60);

/// Whether a session created at `created_at` and last used at `last_seen_at` is valid at `now`
/// (the token behind it being unrevoked is the store's check).
pub fn is_live(created_at: DateTime<Utc>, last_seen_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - last_seen_at < IDLE_TIMEOUT && now - created_at < ABSOLUTE_TIMEOUT
}

/// Whether this request should write the session's last use.
pub fn needs_touch(last_seen_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - last_seen_at >= TOUCH_INTERVAL
}

/// The oldest last use and the oldest creation a live session can have at `now`: rows older
/// than either are deleted.
pub fn expiry_cutoffs(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (now - IDLE_TIMEOUT, now - ABSOLUTE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let h = 3600;
        // Used a moment ago: live.
        assert!(is_live(t(0), t(0), t(60)));
        // Idle just under / at 12 h.
        assert!(is_live(t(0), t(0), t(12 * h - 1)));
        assert!(!is_live(t(0), t(0), t(12 * h)));
        // Busy, but past 7 days since sign-in.
        assert!(is_live(t(0), t(7 * 24 * h - 10), t(7 * 24 * h - 1)));
        assert!(!is_live(t(0), t(7 * 24 * h - 10), t(7 * 24 * h)));
    }

    #[test]
    fn touches_at_most_once_a_minute() {
        assert!(!needs_touch(t(0), t(59)));
        assert!(needs_touch(t(0), t(60)));
    }

    #[test]
    fn cutoffs_match_is_live() {
        let now = t(30 * 24 * 3600);
        let (idle, absolute) = expiry_cutoffs(now);
        assert!(!is_live(now, idle, now));
        assert!(!is_live(absolute, now, now));
        assert!(is_live(
            absolute + Duration::seconds(1),
            idle + Duration::seconds(1),
            now
        ));
    }
}
