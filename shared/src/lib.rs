//! flotilla-shared: everything the agent, the relay and the operator CLI must agree on — the wire
//! protocol between agent and relay, the dashboard API's request and response types, the
//! enumerated command kinds with their typed arguments and results, Ed25519 signing of commands
//! and welcomes, and label selectors.
//!
//! This crate does no I/O: no sockets, no files, no clocks other than what callers pass in
//! (the one exception is the operating system's random source, used for ids and tokens).
#![forbid(unsafe_code)]

/// Declares a validation error: a message that names what was wrong, shown to operators as
/// is. Typed so that a module boundary says which check failed; it reads as its message
/// (`Display`, `Deref<Target = str>`, `== "text"`) and turns into one (`From<_> for String`).
/// Exported for the other crates' boundaries (`flotilla_shared::message_error!`).
#[macro_export]
macro_rules! message_error {
    ($(#[$meta:meta])* $vis:vis $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        $vis struct $name(pub String);

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::error::Error for $name {}

        impl ::std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(e: $name) -> String {
                e.0
            }
        }
    };
}

pub mod alert;
pub mod api;
pub mod backup;
pub mod command;
pub mod compose;
pub mod duration;
pub mod error_codes;
pub mod heartbeat;
pub mod ids;
pub mod limit;
#[cfg(feature = "openapi")]
mod openapi;
pub mod protocol;
pub mod release;
pub mod rollout;
pub mod selector;
pub mod signing;
pub mod stream;
pub mod update;
// issue 17 parts 4 and 6: host upkeep
pub mod upkeep;
// issue 17 §2: host certificates (the agent reads them, the relay alerts on them).
pub mod x509;

/// Version of the agent ↔ relay protocol. Exchanged in `Hello`/`Auth`; a relay refuses agents
/// speaking a version it does not know.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest websocket message either side accepts (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Version of these crates, reported by agents in heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Label keys on Docker containers that the agent reads.
pub mod docker_labels {
    /// `flotilla.ignore=true`: the container is invisible to Flotilla and cannot be touched.
    pub const IGNORE: &str = "flotilla.ignore";
    pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
    pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
}
