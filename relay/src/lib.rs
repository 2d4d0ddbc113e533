//! flotilla-relay: the central server that every agent keeps one websocket to, the dashboard API
//! operators drive the fleet with, and `flotilla`, the operator CLI (a thin client of that API).
//!
//! The server side is started in-process with [`server::start`], which is what the binary's
//! `serve` and `dev` subcommands and the tests use.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod backups;
pub mod cli;
pub mod config;
pub mod dev;
pub mod heartbeats;
pub mod hub;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod releases;
pub mod retention;
pub mod rollouts;
pub mod server;
pub mod state;
pub mod store;
pub mod updates;
pub mod ws;

pub use config::RelayConfig;
pub use server::{start, RunningRelay};
