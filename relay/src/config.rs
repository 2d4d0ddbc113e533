//! The relay's settings. Precedence, highest first: command-line flag, `FLOTILLA_*` environment
//! variable, `relay.toml` (given with `--config` / `FLOTILLA_CONFIG`), built-in default.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {key}: {expected}")]
    Value {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// Settings of `flotilla-relay serve` (and `dev`). Keys of `relay.toml` are these field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Address the HTTP API and agent websocket listen on (`IP:PORT`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Directory holding `relay.db`, `relay.key`, `admin-token` and `listen-addr`.
    pub data_dir: PathBuf,
    /// Seconds between agent heartbeats, told to agents in their welcome.
    pub heartbeat_interval_secs: u64,
    /// Largest websocket message accepted from an agent, in bytes.
    pub max_frame_bytes: usize,
    /// How long a command is deliverable when the request names no TTL, in seconds.
    pub default_command_ttl_secs: u64,
    /// Enrollment requests allowed per client IP per minute (burst size and refill rate).
    pub enroll_rate_per_minute: u32,
    /// Enables the test-only endpoint that injects raw frames into an agent's websocket.
    pub test_hooks: bool,
    /// How long after a command expires the relay still waits for the result of a delivery the
    /// agent accepted (`received`), in seconds. After that the delivery ends `failed` with code
    /// `no_result` (a result arriving later still replaces it). Covers a container stop's
    /// timeout plus the wait for a busy container.
    pub result_grace_secs: u64,
    /// Agent websocket connections allowed to be waiting for authentication at once; further
    /// upgrade requests get 503. Bounds what unauthenticated peers can hold: each may buffer up
    /// to `max_frame_bytes`, since a websocket's limits cannot change after the upgrade.
    pub max_pending_handshakes: usize,
    /// Addresses of reverse proxies (e.g. nginx) whose `X-Forwarded-For` is believed: for
    /// requests from these peers the enrollment rate limit keys on the last address in that
    /// header instead of the peer. Empty: the header is ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// Events, audit rows, finished commands and updates, and backup history older than this
    /// many days are deleted (a sweep runs every few hours; each database's latest backup and
    /// newest success are kept). 0 keeps everything.
    pub retention_days: u32,
    /// Directory of the daily rotating log files (`flotilla-relay.YYYY-MM-DD.log`). Default:
    /// systemd's `LOGS_DIRECTORY` when set, else no files (stderr only, always written).
    pub log_dir: Option<PathBuf>,
    /// `text` or `json`, for the files and stderr alike.
    pub log_format: flotilla_daemon::logging::LogFormat,
    /// Daily log files kept; older ones are deleted.
    pub log_keep_files: usize,
    /// Alert notifications (`[notify]`): webhooks, Slack-compatible webhooks, e-mail, and how
    /// delivery retries. Checked by `Notifier::start`, which reads the secret files.
    pub notify: crate::alerts::notify::NotifyConfig,
    /// Alert rules, thresholds and their evaluation (`[alerts]`, see `alerts/config.rs`).
    pub alerts: crate::alerts::AlertsConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            data_dir: PathBuf::from("./relay-data"),
            heartbeat_interval_secs: 60,
            max_frame_bytes: flotilla_shared::DEFAULT_MAX_FRAME_BYTES,
            default_command_ttl_secs: 600,
            enroll_rate_per_minute: 30,
            test_hooks: false,
            result_grace_secs: 900,
            max_pending_handshakes: 1024,
            trusted_proxies: Vec::new(),
            retention_days: 30,
            log_dir: None,
            log_format: flotilla_daemon::logging::LogFormat::Text,
            log_keep_files: flotilla_daemon::logging::DEFAULT_KEEP_FILES,
            notify: crate::alerts::notify::NotifyConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
        }
    }
}

/// Longest command TTL accepted anywhere (7 days).
pub const MAX_COMMAND_TTL_SECS: u64 = 7 * 24 * 3600;

/// Settings given on the command line or in the environment; `None` = not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub heartbeat_interval_secs: Option<u64>,
    pub max_frame_bytes: Option<usize>,
    pub default_command_ttl_secs: Option<u64>,
    pub enroll_rate_per_minute: Option<u32>,
    pub test_hooks: Option<bool>,
    pub result_grace_secs: Option<u64>,
    pub max_pending_handshakes: Option<usize>,
    pub trusted_proxies: Option<Vec<IpAddr>>,
    pub retention_days: Option<u32>,
    pub log_dir: Option<PathBuf>,
    pub log_format: Option<flotilla_daemon::logging::LogFormat>,
    pub log_keep_files: Option<usize>,
    /// systemd's `LOGS_DIRECTORY`: the log directory when neither an override nor the file
    /// names one.
    pub systemd_logs_dir: Option<PathBuf>,
}

fn parse_env<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    expected: &'static str,
) -> Result<Option<T>, ConfigError> {
    match get(key) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ConfigError::Value {
            key: key.to_string(),
            value: v,
            expected,
        }),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Overrides {
    /// Reads the `FLOTILLA_*` variables through `get` (`std::env::var(..).ok()` in production).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Overrides, ConfigError> {
        let test_hooks = match get("FLOTILLA_TEST_HOOKS") {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(parse_bool(&v).ok_or_else(|| ConfigError::Value {
                key: "FLOTILLA_TEST_HOOKS".into(),
                value: v.clone(),
                expected: "expected true or false",
            })?),
        };
        let trusted_proxies = match get("FLOTILLA_TRUSTED_PROXIES") {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<IpAddr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ConfigError::Value {
                        key: "FLOTILLA_TRUSTED_PROXIES".into(),
                        value: v.clone(),
                        expected: "expected comma-separated IP addresses",
                    })?,
            ),
        };
        let log_format = match get("FLOTILLA_LOG_FORMAT") {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v.parse().map_err(|_| ConfigError::Value {
                key: "FLOTILLA_LOG_FORMAT".into(),
                value: v.clone(),
                expected: "expected text or json",
            })?),
        };
        Ok(Overrides {
            config: get("FLOTILLA_CONFIG")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            listen: parse_env(get, "FLOTILLA_LISTEN", "expected IP:PORT")?,
            data_dir: get("FLOTILLA_DATA_DIR")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            heartbeat_interval_secs: parse_env(
                get,
                "FLOTILLA_HEARTBEAT_INTERVAL_SECS",
                "expected a whole number of seconds",
            )?,
            max_frame_bytes: parse_env(
                get,
                "FLOTILLA_MAX_FRAME_BYTES",
                "expected a whole number of bytes",
            )?,
            default_command_ttl_secs: parse_env(
                get,
                "FLOTILLA_DEFAULT_COMMAND_TTL_SECS",
                "expected a whole number of seconds",
            )?,
            enroll_rate_per_minute: parse_env(
                get,
                "FLOTILLA_ENROLL_RATE_PER_MINUTE",
                "expected a whole number of requests",
            )?,
            test_hooks,
            result_grace_secs: parse_env(
                get,
                "FLOTILLA_RESULT_GRACE_SECS",
                "expected a whole number of seconds",
            )?,
            max_pending_handshakes: parse_env(
                get,
                "FLOTILLA_MAX_PENDING_HANDSHAKES",
                "expected a whole number of connections",
            )?,
            trusted_proxies,
            retention_days: parse_env(
                get,
                "FLOTILLA_RETENTION_DAYS",
                "expected a whole number of days",
            )?,
            log_dir: get("FLOTILLA_LOG_DIR")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            log_format,
            log_keep_files: parse_env(
                get,
                "FLOTILLA_LOG_KEEP_FILES",
                "expected a whole number of files",
            )?,
            systemd_logs_dir: flotilla_daemon::logging::systemd_logs_directory(get),
        })
    }

    /// `self` where set, else `lower`.
    pub fn over(self, lower: Overrides) -> Overrides {
        Overrides {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            heartbeat_interval_secs: self
                .heartbeat_interval_secs
                .or(lower.heartbeat_interval_secs),
            max_frame_bytes: self.max_frame_bytes.or(lower.max_frame_bytes),
            default_command_ttl_secs: self
                .default_command_ttl_secs
                .or(lower.default_command_ttl_secs),
            enroll_rate_per_minute: self.enroll_rate_per_minute.or(lower.enroll_rate_per_minute),
            test_hooks: self.test_hooks.or(lower.test_hooks),
            result_grace_secs: self.result_grace_secs.or(lower.result_grace_secs),
            max_pending_handshakes: self.max_pending_handshakes.or(lower.max_pending_handshakes),
            trusted_proxies: self.trusted_proxies.or(lower.trusted_proxies),
            retention_days: self.retention_days.or(lower.retention_days),
            log_dir: self.log_dir.or(lower.log_dir),
            log_format: self.log_format.or(lower.log_format),
            log_keep_files: self.log_keep_files.or(lower.log_keep_files),
            systemd_logs_dir: self.systemd_logs_dir.or(lower.systemd_logs_dir),
        }
    }
}

impl RelayConfig {
    /// Parses `relay.toml` text; unknown keys are errors that name the key.
    pub fn from_toml(path: &Path, text: &str) -> Result<RelayConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| {
                        let line = text[..s.start].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default(),
        })
    }

    /// Builds the configuration from flags/environment (already merged, flags first), the config
    /// file they name (if any) and the defaults, then validates it.
    pub fn load(overrides: Overrides) -> Result<RelayConfig, ConfigError> {
        let base = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                RelayConfig::from_toml(path, &text)?
            }
            None => RelayConfig::default(),
        };
        let config = RelayConfig {
            listen: overrides.listen.unwrap_or(base.listen),
            data_dir: overrides.data_dir.unwrap_or(base.data_dir),
            heartbeat_interval_secs: overrides
                .heartbeat_interval_secs
                .unwrap_or(base.heartbeat_interval_secs),
            max_frame_bytes: overrides.max_frame_bytes.unwrap_or(base.max_frame_bytes),
            default_command_ttl_secs: overrides
                .default_command_ttl_secs
                .unwrap_or(base.default_command_ttl_secs),
            enroll_rate_per_minute: overrides
                .enroll_rate_per_minute
                .unwrap_or(base.enroll_rate_per_minute),
            test_hooks: overrides.test_hooks.unwrap_or(base.test_hooks),
            result_grace_secs: overrides
                .result_grace_secs
                .unwrap_or(base.result_grace_secs),
            max_pending_handshakes: overrides
                .max_pending_handshakes
                .unwrap_or(base.max_pending_handshakes),
            trusted_proxies: overrides.trusted_proxies.unwrap_or(base.trusted_proxies),
            retention_days: overrides.retention_days.unwrap_or(base.retention_days),
            log_dir: overrides
                .log_dir
                .or(base.log_dir)
                .or(overrides.systemd_logs_dir),
            log_format: overrides.log_format.unwrap_or(base.log_format),
            log_keep_files: overrides.log_keep_files.unwrap_or(base.log_keep_files),
            notify: base.notify,
            alerts: base.alerts,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, expected: &'static str| {
            Err(ConfigError::Value {
                key: key.to_string(),
                value,
                expected,
            })
        };
        if !(1..=86_400).contains(&self.heartbeat_interval_secs) {
            return bad(
                "heartbeat_interval_secs",
                self.heartbeat_interval_secs.to_string(),
                "expected 1 to 86400 seconds",
            );
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.max_frame_bytes) {
            return bad(
                "max_frame_bytes",
                self.max_frame_bytes.to_string(),
                "expected 4096 to 67108864 bytes",
            );
        }
        if !(1..=MAX_COMMAND_TTL_SECS).contains(&self.default_command_ttl_secs) {
            return bad(
                "default_command_ttl_secs",
                self.default_command_ttl_secs.to_string(),
                "expected 1 to 604800 seconds",
            );
        }
        if self.enroll_rate_per_minute == 0 {
            return bad(
                "enroll_rate_per_minute",
                "0".into(),
                "expected at least 1 request per minute",
            );
        }
        if self.result_grace_secs > MAX_COMMAND_TTL_SECS {
            return bad(
                "result_grace_secs",
                self.result_grace_secs.to_string(),
                "expected 0 to 604800 seconds",
            );
        }
        if self.max_pending_handshakes == 0 {
            return bad(
                "max_pending_handshakes",
                "0".into(),
                "expected at least 1 connection",
            );
        }
        if self.retention_days > 36_500 {
            return bad(
                "retention_days",
                self.retention_days.to_string(),
                "expected 0 (keep everything) to 36500 days",
            );
        }
        if flotilla_daemon::logging::check_keep_files(self.log_keep_files).is_err() {
            return bad(
                "log_keep_files",
                self.log_keep_files.to_string(),
                "expected 1 to 3650 files",
            );
        }
        if let Err((key, value, expected)) = self.alerts.validate() {
            return bad(&key, value, expected);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_config_documents_every_setting_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/relay.toml");
        let text = std::fs::read_to_string(&path).expect("packaging/relay.toml");
        let parsed = RelayConfig::from_toml(&path, &text).expect("example parses");
        assert_eq!(
            parsed,
            RelayConfig::default(),
            "example values are the defaults"
        );
        let defaults = serde_json::to_value(RelayConfig::default()).unwrap();
        for key in defaults.as_object().unwrap().keys() {
            assert!(
                text.contains(&format!("\n{key} = "))
                    || text.contains(&format!("\n# {key} = "))
                    || text.contains(&format!("\n[{key}]\n")),
                "{key} is not documented in packaging/relay.toml"
            );
        }
    }

    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn write_toml(text: &str) -> (PathBuf, impl Drop) {
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = std::env::temp_dir().join(format!(
            "flotilla-relay-test-{}.toml",
            flotilla_shared::ids::new_id("cfg")
        ));
        std::fs::write(&path, text).unwrap();
        (path.clone(), Cleanup(path))
    }

    #[test]
    fn defaults() {
        let c = RelayConfig::load(Overrides::default()).unwrap();
        assert_eq!(c, RelayConfig::default());
        assert_eq!(c.heartbeat_interval_secs, 60);
        assert_eq!(c.max_frame_bytes, 1_048_576);
        assert_eq!(c.default_command_ttl_secs, 600);
        assert_eq!(c.enroll_rate_per_minute, 30);
        assert!(!c.test_hooks);
        assert_eq!(c.result_grace_secs, 900);
        assert_eq!(c.max_pending_handshakes, 1024);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.retention_days, 30);
    }

    #[test]
    fn new_settings_from_env_and_file() {
        let (path, _cleanup) = write_toml(
            "result_grace_secs = 60\ntrusted_proxies = [\"10.0.0.1\"]\nretention_days = 7\n",
        );
        let from_env = Overrides::from_env(&env(&[
            ("FLOTILLA_CONFIG", path.to_str().unwrap()),
            ("FLOTILLA_TRUSTED_PROXIES", "127.0.0.1, ::1"),
            ("FLOTILLA_MAX_PENDING_HANDSHAKES", "16"),
            ("FLOTILLA_RESULT_GRACE_SECS", "30"),
        ]))
        .unwrap();
        let c = RelayConfig::load(from_env).unwrap();
        assert_eq!(
            c.trusted_proxies,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(c.max_pending_handshakes, 16);
        assert_eq!(c.result_grace_secs, 30); // env beats file
        assert_eq!(c.retention_days, 7); // file
        let e = Overrides::from_env(&env(&[("FLOTILLA_TRUSTED_PROXIES", "10.0.0.1,nginx")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLOTILLA_TRUSTED_PROXIES"), "{e}");
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let (path, _cleanup) = write_toml(
            "listen = \"127.0.0.1:9000\"\nheartbeat_interval_secs = 5\nmax_frame_bytes = 8192\ntest_hooks = true\n",
        );
        let from_env = Overrides::from_env(&env(&[
            ("FLOTILLA_LISTEN", "127.0.0.1:9001"),
            ("FLOTILLA_HEARTBEAT_INTERVAL_SECS", "7"),
            ("FLOTILLA_CONFIG", path.to_str().unwrap()),
        ]))
        .unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:9002".parse().unwrap()),
            ..Overrides::default()
        };
        let c = RelayConfig::load(flags.over(from_env)).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9002".parse().unwrap()); // flag
        assert_eq!(c.heartbeat_interval_secs, 7); // env
        assert_eq!(c.max_frame_bytes, 8192); // file
        assert!(c.test_hooks); // file
        assert_eq!(c.default_command_ttl_secs, 600); // default
    }

    #[test]
    fn unknown_file_key_is_named() {
        let (path, _cleanup) = write_toml("listen = \"127.0.0.1:1\"\nheartbeat_secs = 5\n");
        let e = RelayConfig::load(Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat_secs"), "{e}");
    }

    #[test]
    fn bad_env_values_are_named() {
        let e = Overrides::from_env(&env(&[("FLOTILLA_MAX_FRAME_BYTES", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLOTILLA_MAX_FRAME_BYTES") && e.contains("lots"),
            "{e}"
        );
        let e = Overrides::from_env(&env(&[("FLOTILLA_TEST_HOOKS", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLOTILLA_TEST_HOOKS"), "{e}");
        let e = RelayConfig::load(Overrides {
            heartbeat_interval_secs: Some(0),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat_interval_secs"), "{e}");
    }

    #[test]
    fn log_settings_from_env_file_and_systemd() {
        use flotilla_daemon::logging::LogFormat;
        let c = RelayConfig::default();
        assert_eq!(
            (c.log_dir, c.log_format, c.log_keep_files),
            (None, LogFormat::Text, 14)
        );
        // systemd's LogsDirectory= is the default ...
        let c = RelayConfig::load(
            Overrides::from_env(&env(&[("LOGS_DIRECTORY", "/var/log/flotilla-relay")])).unwrap(),
        )
        .unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/var/log/flotilla-relay")));
        // ... the file beats it, the environment beats the file.
        let (path, _cleanup) =
            write_toml("log_dir = \"/srv/log\"\nlog_format = \"json\"\nlog_keep_files = 3\n");
        let c = RelayConfig::load(
            Overrides::from_env(&env(&[
                ("LOGS_DIRECTORY", "/var/log/flotilla-relay"),
                ("FLOTILLA_CONFIG", path.to_str().unwrap()),
            ]))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/srv/log")));
        assert_eq!((c.log_format, c.log_keep_files), (LogFormat::Json, 3));
        let c = RelayConfig::load(
            Overrides::from_env(&env(&[
                ("FLOTILLA_CONFIG", path.to_str().unwrap()),
                ("FLOTILLA_LOG_DIR", "/tmp/logs"),
                ("FLOTILLA_LOG_FORMAT", "text"),
                ("FLOTILLA_LOG_KEEP_FILES", "30"),
            ]))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/tmp/logs")));
        assert_eq!((c.log_format, c.log_keep_files), (LogFormat::Text, 30));
    }

    #[test]
    fn bad_log_settings_are_named() {
        let (path, _cleanup) = write_toml("log_format = \"xml\"\n");
        let e = RelayConfig::load(Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("log_format") && e.contains("xml"), "{e}");
        let e = Overrides::from_env(&env(&[("FLOTILLA_LOG_FORMAT", "yaml")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLOTILLA_LOG_FORMAT") && e.contains("yaml") && e.contains("json"),
            "{e}"
        );
        let e = RelayConfig::load(Overrides {
            log_keep_files: Some(0),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("log_keep_files"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = RelayConfig::load(Overrides {
            config: Some("/nonexistent/relay.toml".into()),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/relay.toml"), "{e}");
    }
}
