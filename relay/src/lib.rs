//! flotilla-relay-server: the central server that every agent keeps one websocket to and the
//! dashboard API operators drive the fleet with (the `flotilla` CLI, crate `flotilla-cli`, is a
//! thin client of that API and does not depend on this crate).
//!
//! The server is started in-process with [`start`], which is what the `flotilla-relay`
//! binary's `serve` and `dev` subcommands (crate `relay/bin`) and the tests use.
#![forbid(unsafe_code)]

mod alerts;
mod api;
mod backups;
mod cluster;
mod commands;
pub mod config;
mod heartbeats;
mod hub;
mod jobs;
mod keys;
mod listener;
mod metrics;
pub mod migrate;
mod model;
mod peers;
mod ratelimit;
mod releases;
mod retention;
mod rollouts;
pub mod selfbackup;
mod server;
mod state;
mod store;
mod stream;
mod web;
mod ws;

pub use config::RelayConfig;
pub use server::{start, RunningRelay};

/// What the binary crate (dev mode) and the integration tests use beyond [`start`]: the admin
/// token file, an enrollment token made directly in the store, the notifier's channels, and
/// an engine stepped by hand. (The integration tests also reach the app state through the
/// hidden `RunningRelay::state`, to build engines over the relay's own parts.)
pub mod embed {
    pub use crate::alerts::notify;
    pub use crate::keys::{read_admin_token, ADMIN_TOKEN_FILE};
    pub use crate::rollouts::RolloutEngine;
    pub use crate::server::DB_FILE;
    pub use crate::store::{now, redact_database_url, NewEnrollmentToken, Store};
}

#[cfg(test)]
#[path = "tests/engines.rs"]
mod engine_tests;
