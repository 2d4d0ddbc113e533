//! Off-site copies of backups, shared by the agent (database dumps) and the relay (its own
//! database): destinations (a directory, or S3-compatible storage through our own small SigV4
//! client), age encryption and decryption, and grandfather-father-son retention planning, with
//! the configuration types of `[[backup.destinations]]` and `[backup.retention]`.
//!
//! Nothing here knows either daemon: the callers decide what to upload, under which keys, and
//! what to remove from the plans this crate makes.

pub mod config;
pub mod decrypt;
pub mod destination;
pub mod encrypt;
pub mod retention;
