//! flotilla-relay: the central server that every agent keeps one websocket to, the dashboard API
//! operators drive the fleet with, and `flotilla`, the operator CLI (a thin client of that API).
#![forbid(unsafe_code)]

pub mod cli;
