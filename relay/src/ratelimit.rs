//! Per-client token buckets, and which address a request comes from when a trusted proxy sits
//! in front. Enrollment and sign-in are unauthenticated, so they are limited per client address
//! (`per_minute` requests in a burst); the API is limited per token and per address alike
//! (`api_rate_per_sec` refill, `api_rate_burst` burst; `api/limits.rs`). A refusal says how
//! long until the next token ([`RateLimiter::try_take`]), which becomes `Retry-After`.
//!
//! IPv6 clients are keyed by their /64: one host usually owns a whole /64, so keying by the full
//! address would let it take a fresh bucket per request. The map is bounded: buckets that are
//! full again carry no information and are dropped by a periodic prune, and at
//! [`MAX_TRACKED_CLIENTS`] the least recently used ones are evicted.

pub mod handshakes;

use axum::http::HeaderMap;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most clients tracked at once.
pub const MAX_TRACKED_CLIENTS: usize = 50_000;
/// How often buckets that are full again are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Allows `burst` requests per client at once, refilled at `per_sec`; clients are keyed by `K`
/// (an address by default, an API token's hash for the API's per-token limit).
pub struct RateLimiter<K = IpAddr> {
    burst: f64,
    per_sec: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// The key a client address is limited under: IPv4 as is (also when IPv4-mapped), IPv6 by /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy and sent
/// `X-Forwarded-For`, in which case the last address in that header (the one the proxy itself
/// saw and appended; earlier entries are whatever the client claimed).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer_is_proxy = trusted_proxies
        .iter()
        .any(|p| client_key_exact(*p) == client_key_exact(peer));
    if !peer_is_proxy {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|last| last.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

/// An address with IPv4-mapped IPv6 folded to IPv4, so `::ffff:127.0.0.1` matches `127.0.0.1`.
fn client_key_exact(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl RateLimiter<IpAddr> {
    /// `per_minute` requests in a burst, refilled evenly over a minute.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter::with_max_clients(per_minute, MAX_TRACKED_CLIENTS)
    }

    pub fn with_max_clients(per_minute: u32, max_clients: usize) -> RateLimiter {
        let burst = f64::from(per_minute);
        RateLimiter::with_rate(burst, burst / 60.0, max_clients)
    }

    /// Takes one token for `client` at time `now`; false when none is left. IPv6 clients share
    /// their /64's bucket.
    pub fn check(&self, client: IpAddr, now: Instant) -> bool {
        self.try_take(client_key(client), now).is_ok()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `burst` requests at once, refilled at `per_sec`, at most `max_clients` tracked.
    pub fn with_rate(burst: f64, per_sec: f64, max_clients: usize) -> RateLimiter<K> {
        RateLimiter {
            burst: burst.max(1.0),
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        // Buckets are plain numbers; a poisoned lock still guards usable data.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one token for `key` at time `now`, or says how long until one is there. The key
    /// is used as given (callers fold addresses with [`client_key`]).
    pub fn try_take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let (burst, per_sec) = (self.burst, self.per_sec);
        let mut buckets = self.lock();
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            self.prune_locked(&mut buckets, now);
            if buckets.len() >= self.max_clients {
                evict_least_recent(&mut buckets, self.max_clients / 10 + 1);
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }

    fn prune_locked(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < burst
        });
    }

    /// Forgets clients whose bucket is full again (they would get a fresh full one anyway).
    pub fn prune(&self, now: Instant) {
        let mut buckets = self.lock();
        self.prune_locked(&mut buckets, now);
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// Drops the `n` buckets used least recently.
fn evict_least_recent<K: Hash + Eq + Clone>(buckets: &mut HashMap<K, Bucket>, n: usize) {
    let mut by_age: Vec<(Instant, K)> = buckets.iter().map(|(k, b)| (b.last, k.clone())).collect();
    let n = n.min(by_age.len());
    if n == 0 {
        return;
    }
    by_age.select_nth_unstable_by_key(n - 1, |(at, _)| *at);
    for (_, k) in &by_age[..n] {
        buckets.remove(k);
    }
}

/// The API's two tables (`api/limits.rs` charges them): per credential (a token's or session's
/// hash) and per client address.
pub struct ApiLimits {
    pub by_credential: std::sync::Arc<RateLimiter<String>>,
    pub by_address: std::sync::Arc<RateLimiter<IpAddr>>,
}

impl ApiLimits {
    pub fn new(per_sec: u32, burst: u32) -> ApiLimits {
        let (per_sec, burst) = (f64::from(per_sec), f64::from(burst));
        ApiLimits {
            by_credential: std::sync::Arc::new(RateLimiter::with_rate(
                burst,
                per_sec,
                MAX_TRACKED_CLIENTS,
            )),
            by_address: std::sync::Arc::new(RateLimiter::with_rate(
                burst,
                per_sec,
                MAX_TRACKED_CLIENTS,
            )),
        }
    }
}

/// Prunes the limiter every [`PRUNE_INTERVAL`] until shutdown.
pub async fn run_pruner<K: Hash + Eq + Clone>(
    limiter: std::sync::Arc<RateLimiter<K>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => limiter.prune(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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

    #[test]
    fn ipv6_is_limited_per_64() {
        let rl = RateLimiter::new(2);
        let t0 = Instant::now();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.check(one, t0));
        assert!(rl.check(same_64, t0));
        assert!(!rl.check(one, t0), "the /64 shares one bucket");
        assert!(rl.check(other_64, t0));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_refusal_says_when_the_next_request_is_allowed() {
        // The API's plan: 30 per second, bursts of 50.
        let rl: RateLimiter<String> = RateLimiter::with_rate(50.0, 30.0, 100);
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(
                rl.try_take("tok".into(), t0).is_ok(),
                "request {i} of the burst"
            );
        }
        let wait = rl.try_take("tok".into(), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(30) && wait <= Duration::from_millis(34),
            "one token refills in 1/30 s: {wait:?}"
        );
        assert!(
            rl.try_take("other".into(), t0).is_ok(),
            "another key is unaffected"
        );
        let later = t0 + wait + Duration::from_millis(1);
        assert!(rl.try_take("tok".into(), later).is_ok());
        assert!(
            rl.try_take("tok".into(), later).is_err(),
            "one token, not a new burst"
        );
    }

    #[test]
    fn map_is_pruned_and_bounded() {
        let rl = RateLimiter::with_max_clients(60, 100);
        let t0 = Instant::now();
        for i in 0..100u32 {
            assert!(rl.check(IpAddr::from(i.to_be_bytes()), t0));
        }
        assert_eq!(rl.tracked(), 100);
        // One token refills in a second: by then every bucket is full again and forgotten.
        rl.prune(t0 + Duration::from_secs(2));
        assert_eq!(rl.tracked(), 0);
        // Without time passing nothing is full, so a new client evicts the least recent ones
        // instead of growing the map.
        for i in 0..250u32 {
            rl.check(IpAddr::from((1000 + i).to_be_bytes()), t0);
            assert!(rl.tracked() <= 100);
        }
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.7".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.1"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let trusted = [proxy];
        // A trusted proxy: the last address it appended.
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // IPv4-mapped peer addresses count as the proxy too.
        assert_eq!(
            client_address("::ffff:127.0.0.1".parse().unwrap(), &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Anyone else: the header is ignored.
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        assert_eq!(client_address(proxy, &headers, &[]), proxy);
        // A trusted proxy without (or with a garbled) header: the peer.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", HeaderValue::from_static("unknown"));
        assert_eq!(client_address(proxy, &bad, &trusted), proxy);
    }
}
