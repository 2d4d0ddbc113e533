//! flotilla-tests: end-to-end tests of Flotilla with real parts — relay and agent processes on
//! loopback, the real Docker engine, a real local registry, real SQLite files — plus the fixtures
//! they share (the static test application and its images) and a scripted agent for protocol abuse.
#![forbid(unsafe_code)]

pub mod browser;
pub mod fake_agent;
pub mod fixtures;
pub mod harness;
pub mod pg;
pub mod procfs;
pub mod sim;
pub mod tcpproxy;
