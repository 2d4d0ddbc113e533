//! flotilla-daemon: the few things both long-running Flotilla processes (`flotilla-agent` and
//! `flotilla-relay`) need from their host and nothing else: logging to stderr and rotating files
//! (`logging`), systemd's readiness and watchdog notifications (`systemd`), full-jitter
//! reconnect backoff (`backoff`), the settings table both configs are generated from
//! (`settings`, the `settings!` macro), and TLS client settings (`tls`: the agent to its relay,
//! the relay to PostgreSQL). It exists so that the relay server does not depend on the
//! agent: neither daemon's library links the other (a test over `cargo metadata` checks it).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod logging;
pub mod settings;
pub mod systemd;
pub mod tls;
