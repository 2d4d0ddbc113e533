//! The machinery behind the settings table in `config.rs` is `flotilla_daemon::settings!`,
//! shared with the agent: one entry per setting becomes `RelayConfig`'s field and default, the
//! `Overrides` field, the `FLOTILLA_*` variable read by `Overrides::from_env`, the merge, the
//! range check and a row of [`SETTINGS`](super::SETTINGS). This module names its types for the
//! relay and turns its errors into [`ConfigError`]s.

use super::ConfigError;
pub use flotilla_daemon::settings::{Env, Setting};
use flotilla_daemon::settings::{EnvError, RangeError};

/// A variable that does not parse: the error names the variable as the key.
impl From<EnvError> for ConfigError {
    fn from(e: EnvError) -> Self {
        ConfigError::Value {
            key: e.name.to_string(),
            value: e.value,
            expected: e.expected,
        }
    }
}

/// A value out of range: the error names the key, and its variable when it has one (the
/// value may have come from either).
impl From<RangeError> for ConfigError {
    fn from(e: RangeError) -> Self {
        ConfigError::Value {
            key: match e.env {
                Some(var) => format!("{} (relay.toml or {var})", e.key),
                None => e.key.to_string(),
            },
            value: e.value,
            expected: e.expected,
        }
    }
}
