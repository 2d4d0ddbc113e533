//! Agent websockets that have not authenticated yet, counted in all and per client address
//! (review finding 9: with one global cap, one address holding every slot locked the whole
//! fleet out).
//!
//! Here rather than in `ws/` because the app state holds the counts (and `state` imports no
//! adapter). A connection takes a [`Pending`] slot before the upgrade and gives it back (by dropping it)
//! once the agent authenticated or the attempt ended. It is refused when its address (IPv6 by
//! /64, as every per-address limit) already holds `per_address`, or when the relay holds
//! `total` in all. The last quarter of `total` is only for addresses holding no other pending
//! handshake: a reconnecting agent needs one, so however many addresses fill their own caps,
//! agents coming back one per address still get in until the reserve is used up too.

use super::client_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a pending handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address holds its `max_pending_handshakes_per_address`.
    Address,
    /// The relay holds `max_pending_handshakes` (or all but the reserve, for a busy address).
    Full,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The counts; shared by every connection (`Shared::handshakes`).
pub struct PendingHandshakes {
    total: usize,
    per_address: usize,
    reserved: usize,
    counts: Mutex<Counts>,
}

/// One pending handshake's slot; dropping it gives the slot back.
pub struct Pending {
    owner: Arc<PendingHandshakes>,
    key: IpAddr,
}

impl PendingHandshakes {
    pub fn new(total: usize, per_address: usize) -> PendingHandshakes {
        PendingHandshakes {
            total,
            per_address,
            reserved: total / 4,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters; a poisoned lock still guards usable numbers.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `client`, or why there is none.
    pub fn try_take(self: &Arc<Self>, client: IpAddr) -> Result<Pending, Refusal> {
        let key = client_key(client);
        let mut counts = self.lock();
        let held = counts.by_address.get(&key).copied().unwrap_or(0);
        if held >= self.per_address {
            return Err(Refusal::Address);
        }
        let limit = if held == 0 {
            self.total
        } else {
            self.total - self.reserved
        };
        if counts.total >= limit {
            return Err(Refusal::Full);
        }
        counts.total += 1;
        *counts.by_address.entry(key).or_insert(0) += 1;
        Ok(Pending {
            owner: self.clone(),
            key,
        })
    }

    /// Pending handshakes now, in all.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let p = Arc::new(PendingHandshakes::new(16, 8));
        let held: Vec<_> = (0..8)
            .map(|_| p.try_take(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(p.try_take(ip("10.0.0.1")).err(), Some(Refusal::Address));
        // IPv6 by /64: another address of the same /64 is the same client.
        let six: Vec<_> = (0..4)
            .map(|i| p.try_take(ip(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert_eq!(
            p.try_take(ip("2001:db8::ffff")).err(),
            Some(Refusal::Full),
            "12 of 16 taken: the last 4 are for addresses holding none"
        );
        // Reconnecting agents, one per address, still get in through the reserve.
        let agents: Vec<_> = (0..4)
            .map(|i| p.try_take(ip(&format!("10.0.1.{i}"))).unwrap())
            .collect();
        assert_eq!(p.try_take(ip("10.0.2.1")).err(), Some(Refusal::Full));
        assert_eq!(p.total(), 16);
        drop((held, six, agents));
        assert_eq!(p.total(), 0);
        assert!(
            p.lock().by_address.is_empty(),
            "no entry outlives its slots"
        );
        assert!(p.try_take(ip("10.0.0.1")).is_ok());
    }
}
