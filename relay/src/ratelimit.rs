//! Per-client token buckets (enrollment is unauthenticated, so it is rate-limited per IP).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Above this many tracked clients, buckets that are full again are forgotten.
const PRUNE_ABOVE: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Allows `per_minute` requests per client in a burst, refilled evenly over a minute.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client` at time `now`; false when none is left.
    pub fn check(&self, client: IpAddr, now: Instant) -> bool {
        let capacity = f64::from(self.per_minute);
        let refill_per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * refill_per_sec
                    < capacity
            });
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * refill_per_sec).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_client() {
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(rl.check(a, t0));
        assert!(rl.check(a, t0));
        assert!(rl.check(a, t0));
        assert!(!rl.check(a, t0), "burst is the per-minute allowance");
        assert!(rl.check(b, t0), "other clients have their own bucket");
        // 3 per minute = one token every 20 s.
        assert!(!rl.check(a, t0 + Duration::from_secs(19)));
        assert!(rl.check(a, t0 + Duration::from_secs(21)));
        assert!(!rl.check(a, t0 + Duration::from_secs(22)));
        // A long pause refills only up to the burst size.
        let later = t0 + Duration::from_secs(3600);
        assert!(rl.check(a, later) && rl.check(a, later) && rl.check(a, later));
        assert!(!rl.check(a, later));
    }
}
