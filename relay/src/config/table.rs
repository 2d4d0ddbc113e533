//! The machinery behind the settings table in `config.rs`: the [`settings!`] macro that turns
//! one entry per setting into `RelayConfig`'s field and default, the `Overrides` field, the
//! `FLOTILLA_*` variable read by `Overrides::from_env`, the merge (`Overrides::over`, and the
//! overrides applied over the file in `RelayConfig::load`), the range check and a row of
//! [`SETTINGS`](super::SETTINGS); and the small typed parsers of environment values
//! ([`EnvValue`]).

use flotilla_daemon::logging::LogFormat;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// One key of `relay.toml`, as the settings table declares it (see [`SETTINGS`](super::SETTINGS)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key: `listen`, or `section.key` for a key of `[notify]` / `[alerts]`.
    pub key: &'static str,
    /// The Rust type of the value, as written in the table.
    pub ty: &'static str,
    /// How the key can be set besides the file.
    pub env: Env,
}

/// Whether a setting has an environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// `name` sets it; a value that does not parse is refused with `expected`.
    Var {
        name: &'static str,
        expected: &'static str,
    },
    /// Only the file sets it, for the reason given (what `relay.toml` also says).
    FileOnly { why: &'static str },
}

impl Setting {
    /// The environment variable, if the setting has one.
    pub fn env_name(&self) -> Option<&'static str> {
        match self.env {
            Env::Var { name, .. } => Some(name),
            Env::FileOnly { .. } => None,
        }
    }
}

/// A value an environment variable can hold. `text` is the variable's value, never empty or
/// blank (those count as "not given").
pub trait EnvValue: Sized {
    /// What the error says is expected when `parse_env` refuses a value.
    const EXPECTED: &'static str;
    fn parse_env(text: &str) -> Option<Self>;
}

/// A `RelayConfig` field an override can set: plain values are replaced, an `Option<T>` field
/// is set to `Some` (an override can name a value, not take one away).
pub trait Field {
    /// What an override of this field holds.
    type Value: EnvValue;
    fn set(&mut self, value: Self::Value);
}

impl<T: EnvValue> Field for Option<T> {
    type Value = T;
    fn set(&mut self, value: T) {
        *self = Some(value);
    }
}

macro_rules! plain_fields {
    ($($t:ty),* $(,)?) => {
        $(impl Field for $t {
            type Value = $t;
            fn set(&mut self, value: $t) {
                *self = value;
            }
        })*
    };
}

plain_fields!(
    bool,
    u32,
    u64,
    usize,
    String,
    PathBuf,
    SocketAddr,
    LogFormat,
    Vec<IpAddr>,
    Vec<String>,
);

macro_rules! from_str_values {
    ($($t:ty => $expected:literal),* $(,)?) => {
        $(impl EnvValue for $t {
            const EXPECTED: &'static str = $expected;
            fn parse_env(text: &str) -> Option<Self> {
                text.trim().parse().ok()
            }
        })*
    };
}

from_str_values!(
    u32 => "expected a whole number (0 to 4294967295)",
    u64 => "expected a whole number",
    usize => "expected a whole number",
    SocketAddr => "expected IP:PORT",
    LogFormat => "expected text or json",
);

impl EnvValue for bool {
    const EXPECTED: &'static str = "expected true or false";
    fn parse_env(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        }
    }
}

/// Taken as given (a path may end in a space).
impl EnvValue for PathBuf {
    const EXPECTED: &'static str = "expected a path";
    fn parse_env(text: &str) -> Option<Self> {
        Some(PathBuf::from(text))
    }
}

impl EnvValue for String {
    const EXPECTED: &'static str = "expected text";
    fn parse_env(text: &str) -> Option<Self> {
        Some(text.trim().to_string())
    }
}

/// Comma-separated; blank entries are skipped (so `,` is the empty list).
impl EnvValue for Vec<IpAddr> {
    const EXPECTED: &'static str = "expected comma-separated IP addresses";
    fn parse_env(text: &str) -> Option<Self> {
        list(text).map(str::parse).collect::<Result<_, _>>().ok()
    }
}

/// Comma-separated; blank entries are skipped (so `,` is the empty list). What an entry must
/// look like is the setting's own check (`validate`).
impl EnvValue for Vec<String> {
    const EXPECTED: &'static str = "expected comma-separated values";
    fn parse_env(text: &str) -> Option<Self> {
        Some(list(text).map(str::to_string).collect())
    }
}

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `name`'s value through `get`, parsed: `None` when unset or blank, an error naming the
/// variable, the value and what is expected when it does not parse.
pub fn env_value<T: EnvValue>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, super::ConfigError> {
    match get(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match T::parse_env(&v) {
            Some(value) => Ok(Some(value)),
            None => Err(super::ConfigError::Value {
                key: name.to_string(),
                value: v,
                expected: T::EXPECTED,
            }),
        },
    }
}

/// Declares the relay's settings; invoked once, in `config.rs`. Two kinds of entry:
///
/// - a top-level key, whose field, default and doc are all in the entry:
///   `/// doc` `key: Type = default, env "FLOTILLA_KEY" [, check |v| bool-expr, "expected …"];`
/// - a section (`[notify]`, `[alerts]`), a struct of its own module that keeps its fields,
///   defaults and docs; the entry names the section's keys that have a variable
///   (`key: Type = "FLOTILLA_SECTION_KEY";`) and those that are file-only, with the reason
///   (`key: Type = "why";`).
///
/// It generates `RelayConfig`, `Overrides` (plus one overrides struct per section),
/// `Overrides::{from_env, over, apply}`, `RelayConfig::check_ranges` and `SETTINGS`.
macro_rules! settings {
    (
        top {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr, env $env:literal
                $(, check $check:expr, $expected:literal)?;
            )*
        }
        $(
            $(#[doc = $sdoc:literal])*
            section $sec:ident : $sty:ty => $ov:ident {
                env {
                    $( $sf:ident : $sfty:ty = $senv:literal; )*
                }
                file_only {
                    $( $nf:ident : $nfty:ty = $why:literal; )*
                }
            }
        )*
    ) => {
        /// Settings of `flotilla-relay serve` (and `dev`). Keys of `relay.toml` are these field
        /// names (and those of the section structs).
        #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct RelayConfig {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $( $(#[doc = $sdoc])* pub $sec: $sty, )*
        }

        impl Default for RelayConfig {
            fn default() -> Self {
                RelayConfig {
                    $( $field: $default, )*
                    $( $sec: <$sty>::default(), )*
                }
            }
        }

        /// Settings given on the command line or in the environment; `None` = not given.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Overrides {
            /// `relay.toml` to read (`--config`, `FLOTILLA_CONFIG`).
            pub config: Option<PathBuf>,
            $(
                #[doc = concat!("`", stringify!($field), "` (`", $env, "`).")]
                pub $field: Option<<$ty as $crate::config::table::Field>::Value>,
            )*
            $(
                #[doc = concat!("Keys of `[", stringify!($sec), "]`.")]
                pub $sec: $ov,
            )*
            /// systemd's `LOGS_DIRECTORY`: the log directory when neither an override nor the
            /// file names one.
            pub systemd_logs_dir: Option<PathBuf>,
        }

        $(
            #[doc = concat!("Overrides of `[", stringify!($sec), "]` keys; `None` = not given.")]
            #[derive(Clone, Debug, Default, PartialEq, Eq)]
            pub struct $ov {
                $(
                    #[doc = concat!(
                        "`", stringify!($sec), ".", stringify!($sf), "` (`", $senv, "`)."
                    )]
                    pub $sf: Option<<$sfty as $crate::config::table::Field>::Value>,
                )*
            }
        )*

        impl Overrides {
            /// Reads the `FLOTILLA_*` variables through `get` (`std::env::var(..).ok()` in
            /// production). A blank variable counts as unset; one that does not parse is an
            /// error naming the variable and its value.
            pub fn from_env(
                get: &dyn Fn(&str) -> Option<String>,
            ) -> Result<Overrides, ConfigError> {
                use $crate::config::table::env_value;
                Ok(Overrides {
                    config: env_value(get, "FLOTILLA_CONFIG")?,
                    $( $field: env_value(get, $env)?, )*
                    $( $sec: $ov { $( $sf: env_value(get, $senv)?, )* }, )*
                    systemd_logs_dir: flotilla_daemon::logging::systemd_logs_directory(get),
                })
            }

            /// `self` where set, else `lower`.
            pub fn over(self, lower: Overrides) -> Overrides {
                Overrides {
                    config: self.config.or(lower.config),
                    $( $field: self.$field.or(lower.$field), )*
                    $( $sec: $ov { $( $sf: self.$sec.$sf.or(lower.$sec.$sf), )* }, )*
                    systemd_logs_dir: self.systemd_logs_dir.or(lower.systemd_logs_dir),
                }
            }

            /// Sets every given value in `config` (the file's values, or the defaults).
            fn apply(self, config: &mut RelayConfig) {
                use $crate::config::table::Field;
                $( if let Some(v) = self.$field { config.$field.set(v); } )*
                $( $( if let Some(v) = self.$sec.$sf { config.$sec.$sf.set(v); } )* )*
                if config.log_dir.is_none() {
                    config.log_dir = self.systemd_logs_dir;
                }
            }
        }

        // A file-only entry names a field of its section, of the type it gives.
        $( $( const _: fn(&RelayConfig) -> &$nfty = |c| &c.$sec.$nf; )* )*

        impl RelayConfig {
            /// The `check` of every top-level entry, in table order; the error names the key.
            fn check_ranges(&self) -> Result<(), ConfigError> {
                $($(
                    let ok: fn(&$ty) -> bool = $check;
                    if !ok(&self.$field) {
                        return Err(ConfigError::Value {
                            key: stringify!($field).to_string(),
                            value: self.$field.to_string(),
                            expected: $expected,
                        });
                    }
                )?)*
                Ok(())
            }
        }

        /// Every key of `relay.toml`, in the table's order: its environment variable, or why
        /// it has none. A test keeps `packaging/relay.toml` in step with this.
        pub const SETTINGS: &[$crate::config::table::Setting] = &[
            $(
                $crate::config::table::Setting {
                    key: stringify!($field),
                    ty: stringify!($ty),
                    env: $crate::config::table::Env::Var {
                        name: $env,
                        expected: <<$ty as $crate::config::table::Field>::Value
                            as $crate::config::table::EnvValue>::EXPECTED,
                    },
                },
            )*
            $(
                $(
                    $crate::config::table::Setting {
                        key: concat!(stringify!($sec), ".", stringify!($sf)),
                        ty: stringify!($sfty),
                        env: $crate::config::table::Env::Var {
                            name: $senv,
                            expected: <<$sfty as $crate::config::table::Field>::Value
                                as $crate::config::table::EnvValue>::EXPECTED,
                        },
                    },
                )*
                $(
                    $crate::config::table::Setting {
                        key: concat!(stringify!($sec), ".", stringify!($nf)),
                        ty: stringify!($nfty),
                        env: $crate::config::table::Env::FileOnly { why: $why },
                    },
                )*
            )*
        ];
    };
}

pub(crate) use settings;
