//! flotilla-relay-server: the central server that every agent keeps one websocket to and the
//! dashboard API operators drive the fleet with (the `flotilla` CLI, crate `flotilla-cli`, is a
//! thin client of that API and does not depend on this crate).
//!
//! The server is started in-process with [`server::start`], which is what the `flotilla-relay`
//! binary's `serve` and `dev` subcommands (crate `relay/bin`) and the tests use.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod backups;
pub mod commands;
pub mod config;
pub mod heartbeats;
pub mod hub;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod releases;
pub mod retention;
pub mod rollouts;
pub mod server;
pub mod state;
pub mod store;
pub mod ws;

pub use config::RelayConfig;
pub use server::{start, RunningRelay};

#[cfg(test)]
#[path = "tests/engines.rs"]
mod engine_tests;
