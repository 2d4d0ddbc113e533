//! Settings written once, for both daemons: the [`settings!`](crate::settings!) macro turns one
//! table entry per setting (key, type, default, doc, environment variable, range check) into
//! the config struct and its `Default`, an `Overrides` struct, `Overrides::from_env` (the
//! `FLOTILLA_*` variables), the merge (`Overrides::over`, and `apply` over the file's values), the
//! range checks and a `SETTINGS` list that tests compare with `packaging/*.toml`
//! ([`example::drift`]). Also the small typed parsers of environment values ([`EnvValue`]).
//!
//! Each daemon keeps its own error type; the generated code only needs it to convert from
//! [`EnvError`] (a variable that does not parse) and [`RangeError`] (a value out of range).

pub mod example;

use crate::logging::LogFormat;
use flotilla_shared::command::CommandKind;
use flotilla_shared::update::UpdatePhase;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// One key of a daemon's config file (or one environment-only setting), as its settings table
/// declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key: `listen`, `section.key`, or `section.sub.key` for a key of `[section.sub]`.
    pub key: &'static str,
    /// The Rust type of the value, as written in the table.
    pub ty: &'static str,
    /// How the key can be set besides the file.
    pub env: Env,
}

/// Whether a setting has an environment variable, and whether the file can set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// `name` sets it (over the file); a value that does not parse is refused with `expected`.
    Var {
        name: &'static str,
        expected: &'static str,
    },
    /// Only `name` sets it: the file has no such key (test hooks a config file must not
    /// carry).
    Only {
        name: &'static str,
        expected: &'static str,
    },
    /// Only the file sets it, for the reason given (what the example file also says).
    FileOnly { why: &'static str },
}

impl Setting {
    /// The environment variable, if the setting has one.
    pub fn env_name(&self) -> Option<&'static str> {
        match self.env {
            Env::Var { name, .. } | Env::Only { name, .. } => Some(name),
            Env::FileOnly { .. } => None,
        }
    }

    /// Whether the config file has this key.
    pub fn in_file(&self) -> bool {
        !matches!(self.env, Env::Only { .. })
    }
}

/// The variable of the setting `key` in `settings`, if it has one.
pub fn env_name_of(settings: &[Setting], key: &str) -> Option<&'static str> {
    settings
        .iter()
        .find(|s| s.key == key)
        .and_then(Setting::env_name)
}

/// An environment variable whose value does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
    /// What exactly is wrong, when the value's type can say (e.g. which list entry).
    pub detail: Option<String>,
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}",
            self.name, self.value, self.expected
        )?;
        match &self.detail {
            Some(d) => write!(f, " ({d})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for EnvError {}

/// A value (from the file or a variable) outside what its setting's `check` accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeError {
    /// The key, as in [`Setting::key`].
    pub key: &'static str,
    /// The key's environment variable.
    pub env: Option<&'static str>,
    pub value: String,
    pub expected: &'static str,
}

impl std::fmt::Display for RangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {} {:?}", self.key, self.value)?;
        if let Some(env) = self.env {
            write!(f, " (the file's key or {env})")?;
        }
        write!(f, ": {}", self.expected)
    }
}

impl std::error::Error for RangeError {}

/// A value an environment variable can hold. `text` is the variable's value, never empty or
/// blank (those count as "not given").
pub trait EnvValue: Sized {
    /// What the error says is expected when `parse_env` refuses a value.
    const EXPECTED: &'static str;
    fn parse_env(text: &str) -> Option<Self>;
    /// What exactly is wrong with a value `parse_env` refused, when the type can say more
    /// than [`EnvValue::EXPECTED`].
    fn why_not(_text: &str) -> Option<String> {
        None
    }
}

/// A config field an override can set: plain values are replaced, an `Option<T>` field is set
/// to `Some` (an override can name a value, not take one away).
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
    i32,
    u32,
    u64,
    usize,
    String,
    PathBuf,
    SocketAddr,
    LogFormat,
    Vec<IpAddr>,
    Vec<String>,
    Vec<CommandKind>,
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
    i32 => "expected a whole number",
    u32 => "expected a whole number (0 to 4294967295)",
    u64 => "expected a whole number",
    usize => "expected a whole number",
    SocketAddr => "expected IP:PORT",
    LogFormat => "expected text or json",
);

impl EnvValue for UpdatePhase {
    const EXPECTED: &'static str = "expected an update phase such as old_stopped";
    fn parse_env(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
    fn why_not(text: &str) -> Option<String> {
        text.trim().parse::<UpdatePhase>().err()
    }
}

/// Accepts the spellings people use for booleans in environment variables.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl EnvValue for bool {
    const EXPECTED: &'static str = "expected true or false";
    fn parse_env(text: &str) -> Option<Self> {
        parse_bool(text)
    }
}

/// Taken as given (a path may end in a space); see [`trimmed_path`] for the other reading.
impl EnvValue for PathBuf {
    const EXPECTED: &'static str = "expected a path";
    fn parse_env(text: &str) -> Option<Self> {
        Some(PathBuf::from(text))
    }
}

/// A path with the spaces around it dropped: the reading of the variables that have always
/// trimmed (a table entry says `parse trimmed_path`).
pub fn trimmed_path(text: &str) -> Option<PathBuf> {
    Some(PathBuf::from(text.trim()))
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
/// look like is the setting's own check.
impl EnvValue for Vec<String> {
    const EXPECTED: &'static str = "expected comma-separated values";
    fn parse_env(text: &str) -> Option<Self> {
        Some(list(text).map(str::to_string).collect())
    }
}

/// Comma-separated command kinds; blank entries are skipped (so `,` is the empty list).
impl EnvValue for Vec<CommandKind> {
    const EXPECTED: &'static str =
        "expected comma-separated command kinds such as ping,container.list";
    fn parse_env(text: &str) -> Option<Self> {
        list(text).map(str::parse).collect::<Result<_, _>>().ok()
    }
    fn why_not(text: &str) -> Option<String> {
        list(text).find_map(|k| k.parse::<CommandKind>().err().map(|e| e.to_string()))
    }
}

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `name`'s value through `get`, parsed: `None` when unset or blank, an error naming the
/// variable, the value and what is expected when it does not parse.
pub fn env_value<T: EnvValue>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, EnvError> {
    env_parsed(get, name, T::parse_env)
}

/// [`env_value`] with a parser of the table entry's choosing (`parse …`).
pub fn env_parsed<T: EnvValue>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, EnvError> {
    match get(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match parse(&v) {
            Some(value) => Ok(Some(value)),
            None => Err(EnvError {
                name,
                detail: T::why_not(&v),
                value: v,
                expected: T::EXPECTED,
            }),
        },
    }
}

/// Declares a daemon's settings; invoked once, in its `config.rs`. The input, in order:
///
/// - the config struct's attributes and name: `#[derive(…)] pub struct RelayConfig;`
/// - the overrides struct's attributes and name, with any variables read beside the settings
///   (merged, not applied: `config: PathBuf = "FLOTILLA_CONFIG";` names the file to read);
/// - `error ConfigError;`, a type with `From<EnvError>` and `From<RangeError>`;
/// - `top { … }`, the top-level keys, whose field, default and doc are all in the entry:
///   `/// doc` `key: Type = default, env "FLOTILLA_KEY" [, parse f] [, check |v| bool, "expected …"];`
///   (`env_only` instead of `env`: a setting only the variable sets; its field needs
///   `#[serde(skip)]`). `parse f` reads the variable with `f: fn(&str) -> Option<Value>`
///   instead of the value type's [`EnvValue`];
/// - sections (`[notify]`, `[backup]`), structs of their own that keep their fields, defaults
///   and docs: `section key: Type => TypeOverrides { env { … } [section …]* file_only { … } }`,
///   where `env` names the keys that have a variable
///   (`key: Type = "FLOTILLA_SECTION_KEY" [, parse f] [, check …];`), a nested section (one
///   level: `[backup.retention]`) names its keys likewise, and `file_only` the keys without
///   one, with the reason (`key: Type = "why";`).
///
/// It generates the struct and its `Default`, the overrides (one struct per section),
/// `Overrides::{from_env, over, apply}`, `check_ranges` and `SETTINGS`. The config struct
/// must have `log_dir: Option<PathBuf>`: `apply` fills it from systemd's `LOGS_DIRECTORY`
/// when neither an override nor the file names one.
#[macro_export]
macro_rules! settings {
    (
        $(#[$cmeta:meta])*
        pub struct $config:ident;
        $(#[$ometa:meta])*
        pub struct $overrides:ident {
            $( $(#[$xmeta:meta])* $xf:ident : $xty:ty = $xenv:literal; )*
        }
        error $err:ty;
        top {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty = $default:expr, $kind:ident $env:literal
                $(, parse $parse:path)?
                $(, check $check:expr, $expected:literal)?;
            )*
        }
        $(
            $(#[$smeta:meta])*
            section $sec:ident : $sty:ty => $ov:ident {
                env {
                    $(
                        $sf:ident : $sfty:ty = $senv:literal
                        $(, parse $sparse:path)?
                        $(, check $scheck:expr, $sexpected:literal)?;
                    )*
                }
                $(
                    section $ss:ident : $ssty:ty => $ssov:ident {
                        env {
                            $(
                                $ssf:ident : $ssfty:ty = $ssenv:literal
                                $(, check $sscheck:expr, $ssexpected:literal)?;
                            )*
                        }
                    }
                )*
                file_only {
                    $( $nf:ident : $nfty:ty = $why:literal; )*
                }
            }
        )*
    ) => {
        $(#[$cmeta])*
        pub struct $config {
            $( $(#[$fmeta])* pub $field: $ty, )*
            $( $(#[$smeta])* pub $sec: $sty, )*
        }

        impl Default for $config {
            fn default() -> Self {
                $config {
                    $( $field: $default, )*
                    $( $sec: <$sty>::default(), )*
                }
            }
        }

        $(#[$ometa])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $overrides {
            $( $(#[$xmeta])* pub $xf: Option<$xty>, )*
            $(
                #[doc = concat!("`", stringify!($field), "` (`", $env, "`).")]
                pub $field: Option<<$ty as $crate::settings::Field>::Value>,
            )*
            $(
                #[doc = concat!("Keys of `[", stringify!($sec), "]`.")]
                pub $sec: $ov,
            )*
            /// systemd's `LOGS_DIRECTORY`: the log directory when neither an override nor the
            /// file names one.
            pub systemd_logs_dir: Option<::std::path::PathBuf>,
        }

        $(
            #[doc = concat!("Overrides of `[", stringify!($sec), "]` keys; `None` = not given.")]
            #[derive(Clone, Debug, Default, PartialEq, Eq)]
            pub struct $ov {
                $(
                    #[doc = concat!(
                        "`", stringify!($sec), ".", stringify!($sf), "` (`", $senv, "`)."
                    )]
                    pub $sf: Option<<$sfty as $crate::settings::Field>::Value>,
                )*
                $(
                    #[doc = concat!(
                        "Keys of `[", stringify!($sec), ".", stringify!($ss), "]`."
                    )]
                    pub $ss: $ssov,
                )*
            }

            $(
                #[doc = concat!(
                    "Overrides of `[", stringify!($sec), ".", stringify!($ss),
                    "]` keys; `None` = not given."
                )]
                #[derive(Clone, Debug, Default, PartialEq, Eq)]
                pub struct $ssov {
                    $(
                        #[doc = concat!(
                            "`", stringify!($sec), ".", stringify!($ss), ".", stringify!($ssf),
                            "` (`", $ssenv, "`)."
                        )]
                        pub $ssf: Option<<$ssfty as $crate::settings::Field>::Value>,
                    )*
                }
            )*
        )*

        impl $overrides {
            /// Reads the `FLOTILLA_*` variables through `get` (`std::env::var(..).ok()` in
            /// production). A blank variable counts as unset; one that does not parse is an
            /// error naming the variable and its value.
            pub fn from_env(
                get: &dyn Fn(&str) -> Option<String>,
            ) -> Result<$overrides, $err> {
                use $crate::settings::env_value;
                Ok($overrides {
                    $( $xf: env_value(get, $xenv)?, )*
                    $( $field: $crate::__settings_read!(get, $env $(, $parse)?)?, )*
                    $(
                        $sec: $ov {
                            $( $sf: $crate::__settings_read!(get, $senv $(, $sparse)?)?, )*
                            $( $ss: $ssov { $( $ssf: env_value(get, $ssenv)?, )* }, )*
                        },
                    )*
                    systemd_logs_dir: $crate::logging::systemd_logs_directory(get),
                })
            }

            /// `self` where set, else `lower`.
            pub fn over(self, lower: $overrides) -> $overrides {
                $overrides {
                    $( $xf: self.$xf.or(lower.$xf), )*
                    $( $field: self.$field.or(lower.$field), )*
                    $(
                        $sec: $ov {
                            $( $sf: self.$sec.$sf.or(lower.$sec.$sf), )*
                            $(
                                $ss: $ssov {
                                    $( $ssf: self.$sec.$ss.$ssf.or(lower.$sec.$ss.$ssf), )*
                                },
                            )*
                        },
                    )*
                    systemd_logs_dir: self.systemd_logs_dir.or(lower.systemd_logs_dir),
                }
            }

            /// Sets every given value in `config` (the file's values, or the defaults).
            fn apply(self, config: &mut $config) {
                use $crate::settings::Field;
                $( if let Some(v) = self.$field { config.$field.set(v); } )*
                $(
                    $( if let Some(v) = self.$sec.$sf { config.$sec.$sf.set(v); } )*
                    $( $(
                        if let Some(v) = self.$sec.$ss.$ssf { config.$sec.$ss.$ssf.set(v); }
                    )* )*
                )*
                if config.log_dir.is_none() {
                    config.log_dir = self.systemd_logs_dir;
                }
            }
        }

        // Every section entry names a field of its section, of the type it gives.
        $(
            $( const _: fn(&$config) -> &$sfty = |c| &c.$sec.$sf; )*
            $(
                const _: fn(&$config) -> &$ssty = |c| &c.$sec.$ss;
                $( const _: fn(&$config) -> &$ssfty = |c| &c.$sec.$ss.$ssf; )*
            )*
            $( const _: fn(&$config) -> &$nfty = |c| &c.$sec.$nf; )*
        )*

        impl $config {
            /// The `check` of every entry, in table order; the error names the key and its
            /// variable.
            fn check_ranges(&self) -> Result<(), $err> {
                $($(
                    let ok: fn(&$ty) -> bool = $check;
                    if !ok(&self.$field) {
                        return Err($crate::settings::RangeError {
                            key: stringify!($field),
                            env: Some($env),
                            value: self.$field.to_string(),
                            expected: $expected,
                        }
                        .into());
                    }
                )?)*
                $(
                    $($(
                        let ok: fn(&$sfty) -> bool = $scheck;
                        if !ok(&self.$sec.$sf) {
                            return Err($crate::settings::RangeError {
                                key: concat!(stringify!($sec), ".", stringify!($sf)),
                                env: Some($senv),
                                value: self.$sec.$sf.to_string(),
                                expected: $sexpected,
                            }
                            .into());
                        }
                    )?)*
                    $( $($(
                        let ok: fn(&$ssfty) -> bool = $sscheck;
                        if !ok(&self.$sec.$ss.$ssf) {
                            return Err($crate::settings::RangeError {
                                key: concat!(
                                    stringify!($sec), ".", stringify!($ss), ".", stringify!($ssf)
                                ),
                                env: Some($ssenv),
                                value: self.$sec.$ss.$ssf.to_string(),
                                expected: $ssexpected,
                            }
                            .into());
                        }
                    )?)* )*
                )*
                Ok(())
            }
        }

        /// Every setting, in the table's order: its environment variable, or why it has none.
        /// A test keeps the example config file in step with this.
        pub const SETTINGS: &[$crate::settings::Setting] = &[
            $(
                $crate::settings::Setting {
                    key: stringify!($field),
                    ty: stringify!($ty),
                    env: $crate::__settings_env!($kind $env, $ty),
                },
            )*
            $(
                $(
                    $crate::settings::Setting {
                        key: concat!(stringify!($sec), ".", stringify!($sf)),
                        ty: stringify!($sfty),
                        env: $crate::__settings_env!(env $senv, $sfty),
                    },
                )*
                $($(
                    $crate::settings::Setting {
                        key: concat!(stringify!($sec), ".", stringify!($ss), ".", stringify!($ssf)),
                        ty: stringify!($ssfty),
                        env: $crate::__settings_env!(env $ssenv, $ssfty),
                    },
                )*)*
                $(
                    $crate::settings::Setting {
                        key: concat!(stringify!($sec), ".", stringify!($nf)),
                        ty: stringify!($nfty),
                        env: $crate::settings::Env::FileOnly { why: $why },
                    },
                )*
            )*
        ];
    };
}

/// Reads one variable for [`settings!`](crate::settings!): with the value type's parser, or
/// with the entry's `parse` function.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_read {
    ($get:ident, $name:literal) => {
        $crate::settings::env_value($get, $name)
    };
    ($get:ident, $name:literal, $parse:path) => {
        $crate::settings::env_parsed($get, $name, $parse)
    };
}

/// The [`Env`] of a [`settings!`](crate::settings!) entry with a variable (`env` or
/// `env_only`).
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_env {
    (env $name:literal, $ty:ty) => {
        $crate::settings::Env::Var {
            name: $name,
            expected:
                <<$ty as $crate::settings::Field>::Value as $crate::settings::EnvValue>::EXPECTED,
        }
    };
    (env_only $name:literal, $ty:ty) => {
        $crate::settings::Env::Only {
            name: $name,
            expected:
                <<$ty as $crate::settings::Field>::Value as $crate::settings::EnvValue>::EXPECTED,
        }
    };
}
