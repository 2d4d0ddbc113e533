//! Waiting in tests. A test that needs an effect polls for it ([`eventually`], or a [`Poller`]
//! where the loop body must do more than return a value); a test for which elapsed time is the
//! point (nothing happens within a window, a simulated duration, a chosen instant) says so
//! through [`hold`]. These are the only places test code sleeps: the tidy test
//! `sleep_only_inside_testkit_waits` fails on a `sleep(` anywhere else in test code.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled unless [`Poller::every`] says otherwise.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// A deadline and a polling interval for one wait: `expired()` once the deadline has passed,
/// `pause()` between two polls.
#[derive(Debug, Clone, Copy)]
pub struct Poller {
    start: Instant,
    deadline: Duration,
    every: Duration,
}

impl Poller {
    /// A wait of at most `deadline` from now, polled every [`POLL_EVERY`].
    pub fn new(deadline: Duration) -> Poller {
        Poller {
            start: Instant::now(),
            deadline,
            every: POLL_EVERY,
        }
    }

    /// Polls every `every` instead.
    pub fn every(self, every: Duration) -> Poller {
        Poller { every, ..self }
    }

    /// The deadline this poller was made with.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.start.elapsed() >= self.deadline
    }

    /// Waits one polling interval (async).
    pub async fn pause(&self) {
        tokio::time::sleep(self.every).await;
    }

    /// Waits one polling interval, blocking the thread (for synchronous fixtures and threads).
    pub fn pause_blocking(&self) {
        std::thread::sleep(self.every);
    }

    /// Polls `check` until it returns `Some`; `None` once the deadline has passed.
    pub async fn poll<T, F, Fut>(self, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        loop {
            if let Some(v) = check().await {
                return Some(v);
            }
            if self.expired() {
                return None;
            }
            self.pause().await;
        }
    }

    /// [`Poller::poll`] for a synchronous `check`, blocking the thread between polls.
    pub fn poll_blocking<T>(self, mut check: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            if let Some(v) = check() {
                return Some(v);
            }
            if self.expired() {
                return None;
            }
            self.pause_blocking();
        }
    }

    /// Polls `check` until it returns `Some`, or fails the test naming `what`.
    pub async fn until<T, F, Fut>(self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match self.poll(check).await {
            Some(v) => v,
            None => panic!("timed out after {:?} waiting for {what}", self.deadline),
        }
    }

    /// [`Poller::until`] for a synchronous `check`, blocking the thread between polls.
    pub fn until_blocking<T>(self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        match self.poll_blocking(check) {
            Some(v) => v,
            None => panic!("timed out after {:?} waiting for {what}", self.deadline),
        }
    }
}

/// Polls `check` every [`POLL_EVERY`] until it returns `Some`, or fails the test after
/// `deadline` naming `what`. Tests never sleep a fixed time to wait for an effect.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    Poller::new(deadline).until(what, check).await
}

/// [`eventually`] for a synchronous `check`, blocking the thread between polls.
pub fn eventually_blocking<T>(
    deadline: Duration,
    what: &str,
    check: impl FnMut() -> Option<T>,
) -> T {
    Poller::new(deadline).until_blocking(what, check)
}

/// Lets `duration` pass, for a test in which the time itself is the point; `why` says what
/// (e.g. "nothing may be sent within the window", "the simulated update's duration"). Never a
/// way to wait for an effect: poll for that with [`eventually`].
pub async fn hold(duration: Duration, why: &str) {
    assert!(
        !why.trim().is_empty(),
        "a hold says why the time is the point"
    );
    tokio::time::sleep(duration).await;
}

/// [`hold`] blocking the thread.
pub fn hold_blocking(duration: Duration, why: &str) {
    assert!(
        !why.trim().is_empty(),
        "a hold says why the time is the point"
    );
    std::thread::sleep(duration);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn eventually_returns_the_first_some_after_polling_again() {
        let polls = AtomicUsize::new(0);
        let got = eventually(Duration::from_secs(5), "the third poll", || async {
            (polls.fetch_add(1, Ordering::SeqCst) == 2).then_some("third")
        })
        .await;
        assert_eq!((got, polls.load(Ordering::SeqCst)), ("third", 3));
    }

    #[tokio::test]
    async fn poll_gives_up_at_the_deadline() {
        let poller = Poller::new(Duration::from_millis(50)).every(Duration::from_millis(10));
        assert_eq!(poller.poll(|| async { None::<()> }).await, None);
        assert!(poller.expired());
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for nothing")]
    fn until_blocking_names_what_it_waited_for() {
        Poller::new(Duration::from_millis(20)).until_blocking("nothing", || None::<()>);
    }

    #[test]
    #[should_panic(expected = "a hold says why")]
    fn a_hold_needs_a_reason() {
        hold_blocking(Duration::ZERO, " ");
    }
}
