//! The relay's pure model: domain types and decisions with no I/O, shared by the store (which
//! persists the types and applies the decisions inside its transactions) and the engines
//! (which read, decide and write through the store). The store depends on this layer and on
//! the shared types only, never on an engine.

pub mod alerts;
pub mod commands;
pub mod enrollment;
pub mod jobs;
pub mod metrics;
pub mod relaybackup;
pub mod rollouts;
pub mod sessions;
pub mod ttl;
