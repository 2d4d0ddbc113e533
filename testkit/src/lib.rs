//! flotilla-testkit: what the test crates share. [`eventually`] and its blocking twin poll for
//! a condition (the only place a test waits for an effect); [`hold`] and [`hold_blocking`] are
//! the only fixed waits, each named with why the time itself is the point; [`temp_dir`] makes a
//! directory removed on drop; [`agent::ScriptedAgent`] speaks the agent protocol frame by frame;
//! [`docs`] renders a binary's shell completions and man pages (the `*-docs` examples).
//!
//! It depends on neither the relay server nor the agent, so any test crate can use it. A tidy
//! test (`sleep_only_inside_testkit_waits` in tests/tests/tidy.rs) fails when a test sleeps
//! anywhere but in [`wait`].
#![forbid(unsafe_code)]

pub mod agent;
pub mod docs;
pub mod wait;

pub use wait::{eventually, eventually_blocking, hold, hold_blocking, Poller};

/// A fresh directory under the system's temporary directory, named `flotilla-<prefix>-…` and
/// removed (with its contents) when the value is dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("flotilla-{prefix}-"))
        .tempdir()
        .expect("a temporary directory")
}
