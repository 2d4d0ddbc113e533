//! The relay's settings. Precedence, highest first: command-line flag, `FLOTILLA_*` environment
//! variable, `relay.toml` (given with `--config` / `FLOTILLA_CONFIG`), built-in default.
//!
//! Every setting is one entry of the table below (`flotilla_daemon::settings!`, shared with the
//! agent; `config/table.rs` turns its errors into [`ConfigError`]s): key, type, environment
//! variable, and for top-level keys the default, doc and range check. The struct, the
//! overrides, `from_env`, the merge and [`SETTINGS`] are generated from it, and a test
//! (`config/tests.rs`) fails when `packaging/relay.toml` and the table drift apart. The keys of
//! `[notify]` and `[alerts]` keep their fields, defaults and docs in their own structs
//! (`config/notify.rs`, `model/alerts/config.rs`); the table names their variables.

pub mod backup;
pub mod notify;
pub mod table;

use crate::model::alerts::{AlertsConfig, RuleOverride};
use backup::{RelayBackupConfig, RelayRetention};
use flotilla_daemon::logging::LogFormat;
use flotilla_daemon::settings::trimmed_path;
use flotilla_offsite::config::DestinationConfig;
use notify::{EmailConfig, NotifyConfig, SlackConfig, WebhookConfig};
use std::collections::BTreeMap;
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

pub use crate::model::ttl::MAX_COMMAND_TTL_SECS;

flotilla_daemon::settings! {
    /// Settings of `flotilla-relay serve` (and `dev`). Keys of `relay.toml` are these field
    /// names (and those of the section structs).
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RelayConfig;

    /// Settings given on the command line or in the environment; `None` = not given.
    pub struct Overrides {
        /// `relay.toml` to read (`--config`, `FLOTILLA_CONFIG`).
        config: PathBuf = "FLOTILLA_CONFIG";
    }

    error ConfigError;

    top {
        /// Address the HTTP API and agent websocket listen on (`IP:PORT`; port 0 picks a free one).
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8700)), env "FLOTILLA_LISTEN";
        /// Directory holding `relay.db`, `relay.key`, `admin-token` and `listen-addr`.
        data_dir: PathBuf = PathBuf::from("./relay-data"), env "FLOTILLA_DATA_DIR";
        /// The relay's database on PostgreSQL (14 or newer), `postgres://user@host:port/dbname`
        /// (`--database`). Unset: SQLite, `relay.db` in `data_dir`. Several relays may share one
        /// database (with a copy of the same `relay.key`): see the README's high availability.
        database_url: Option<String> = None, env "FLOTILLA_DATABASE_URL";
        /// File holding the PostgreSQL password (its first line), so it is not in the URL, the
        /// config or the environment.
        database_password_file: Option<PathBuf> = None, env "FLOTILLA_DATABASE_PASSWORD_FILE";
        /// Seconds between agent heartbeats, told to agents in their welcome.
        heartbeat_interval_secs: u64 = 60, env "FLOTILLA_HEARTBEAT_INTERVAL_SECS",
            check |v| (1..=86_400).contains(v), "expected 1 to 86400 seconds";
        /// Largest websocket message accepted from an agent, in bytes.
        max_frame_bytes: usize = flotilla_shared::DEFAULT_MAX_FRAME_BYTES,
            env "FLOTILLA_MAX_FRAME_BYTES",
            check |v| (4096..=64 * 1024 * 1024).contains(v), "expected 4096 to 67108864 bytes";
        /// How long a command is deliverable when the request names no TTL, in seconds.
        default_command_ttl_secs: u64 = 600, env "FLOTILLA_DEFAULT_COMMAND_TTL_SECS",
            check |v| (1..=MAX_COMMAND_TTL_SECS).contains(v), "expected 1 to 604800 seconds";
        /// Enrollment requests allowed per client IP per minute (burst size and refill rate).
        enroll_rate_per_minute: u32 = 30, env "FLOTILLA_ENROLL_RATE_PER_MINUTE",
            check |v| *v > 0, "expected at least 1 request per minute";
        /// Enables the test-only endpoint that injects raw frames into an agent's websocket.
        test_hooks: bool = false, env "FLOTILLA_TEST_HOOKS";
        /// How long after a command expires the relay still waits for the result of a delivery the
        /// agent accepted (`received`), in seconds. After that the delivery ends `failed` with code
        /// `no_result` (a result arriving later still replaces it). Covers a container stop's
        /// timeout plus the wait for a busy container.
        result_grace_secs: u64 = 900, env "FLOTILLA_RESULT_GRACE_SECS",
            check |v| *v <= MAX_COMMAND_TTL_SECS, "expected 0 to 604800 seconds";
        /// Agent websocket connections allowed to be waiting for authentication at once; further
        /// upgrade requests get 503. A quarter of them is kept for addresses holding no other
        /// pending handshake (reconnecting agents), whatever busier addresses do. Until it has
        /// authenticated, a connection may send at most a few KiB.
        max_pending_handshakes: usize = 1024, env "FLOTILLA_MAX_PENDING_HANDSHAKES",
            check |v| *v > 0, "expected at least 1 connection";
        /// Of those, how many one client address (an IPv6 /64) may hold; more get 503.
        max_pending_handshakes_per_address: usize = 32,
            env "FLOTILLA_MAX_PENDING_HANDSHAKES_PER_ADDRESS",
            check |v| *v > 0, "expected at least 1 connection";
        /// Open TCP connections (HTTP and websockets) one client address (an IPv6 /64) may hold;
        /// more are closed at once. The `trusted_proxies` are exempt (they carry many clients'
        /// connections). 0: no cap.
        max_connections_per_address: usize = 1024, env "FLOTILLA_MAX_CONNECTIONS_PER_ADDRESS";
        /// Seconds a connection has to send a whole request head (request line and headers),
        /// and that a kept-alive connection may stay idle between requests; then it is closed.
        header_read_timeout_secs: u64 = 15, env "FLOTILLA_HEADER_READ_TIMEOUT_SECS",
            check |v| (1..=3600).contains(v), "expected 1 to 3600 seconds";
        /// API requests per second allowed per API token (or dashboard session) and, separately,
        /// per client address: the refill rate of each bucket. Over it: 429 with `Retry-After`.
        /// The agents' websockets, enrollment (its own limit), health checks, the installer and
        /// agent downloads are not counted.
        api_rate_per_sec: u32 = 30, env "FLOTILLA_API_RATE_PER_SEC",
            check |v| *v > 0, "expected at least 1 request per second";
        /// API requests one token or address may make at once (the bucket's size).
        api_rate_burst: u32 = 50, env "FLOTILLA_API_RATE_BURST",
            check |v| *v > 0, "expected at least 1 request";
        /// Addresses of reverse proxies (e.g. nginx) whose `X-Forwarded-For` is believed: for
        /// requests from these peers the per-address limits (enrollment, sign-in, API, pending
        /// handshakes) key on the last address in that header instead of the peer. Empty: the
        /// header is ignored.
        trusted_proxies: Vec<IpAddr> = Vec::new(), env "FLOTILLA_TRUSTED_PROXIES";
        /// Events, audit rows, finished commands and updates, and backup history older than this
        /// many days are deleted (a sweep runs every few hours; each database's latest backup and
        /// newest success are kept). 0 keeps everything.
        retention_days: u32 = 30, env "FLOTILLA_RETENTION_DAYS",
            check |v| *v <= 36_500, "expected 0 (keep everything) to 36500 days";
        /// Directory of the daily rotating log files (`flotilla-relay.YYYY-MM-DD.log`). Default:
        /// systemd's `LOGS_DIRECTORY` when set, else no files (stderr only, always written).
        log_dir: Option<PathBuf> = None, env "FLOTILLA_LOG_DIR";
        /// `text` or `json`, for the files and stderr alike.
        log_format: LogFormat = LogFormat::Text, env "FLOTILLA_LOG_FORMAT";
        /// Daily log files kept; older ones are deleted.
        log_keep_files: usize = flotilla_daemon::logging::DEFAULT_KEEP_FILES,
            env "FLOTILLA_LOG_KEEP_FILES",
            check |v| flotilla_daemon::logging::check_keep_files(*v).is_ok(),
            "expected 1 to 3650 files";
    }

    /// Alert notifications (`[notify]`): webhooks, Slack-compatible webhooks, e-mail, and how
    /// delivery retries. Checked by `Notifier::start`, which reads the secret files.
    section notify: NotifyConfig => NotifyOverrides {
        env {
            queue_capacity: usize = "FLOTILLA_NOTIFY_QUEUE_CAPACITY";
            max_attempts: u32 = "FLOTILLA_NOTIFY_MAX_ATTEMPTS";
            initial_backoff_secs: u64 = "FLOTILLA_NOTIFY_INITIAL_BACKOFF_SECS";
            max_backoff_secs: u64 = "FLOTILLA_NOTIFY_MAX_BACKOFF_SECS";
        }
        file_only {
            webhooks: Vec<WebhookConfig> = "a list of tables (name, url, secret_file, ...); \
                the HMAC key is read from secret_file";
            slack: Vec<SlackConfig> = "a list of tables; each URL embeds a token";
            email: Vec<EmailConfig> = "a list of tables (server, sender, recipients, ...); \
                the password is read from password_file";
        }
    }

    /// Alert rules, thresholds and their evaluation (`[alerts]`, see `model/alerts/config.rs`).
    section alerts: AlertsConfig => AlertsOverrides {
        env {
            enabled: bool = "FLOTILLA_ALERTS_ENABLED";
            evaluate_interval_secs: u64 = "FLOTILLA_ALERTS_EVALUATE_INTERVAL_SECS";
            unreachable_intervals: u32 = "FLOTILLA_ALERTS_UNREACHABLE_INTERVALS";
            disk_percent: u32 = "FLOTILLA_ALERTS_DISK_PERCENT";
            memory_percent: u32 = "FLOTILLA_ALERTS_MEMORY_PERCENT";
            restart_loop_window_secs: u64 = "FLOTILLA_ALERTS_RESTART_LOOP_WINDOW_SECS";
            container_event_hours: u32 = "FLOTILLA_ALERTS_CONTAINER_EVENT_HOURS";
            event_hold_secs: u64 = "FLOTILLA_ALERTS_EVENT_HOLD_SECS";
            hysteresis_percent: u32 = "FLOTILLA_ALERTS_HYSTERESIS_PERCENT";
            update_alert_hours: u32 = "FLOTILLA_ALERTS_UPDATE_ALERT_HOURS";
            medium_notify_after_secs: u64 = "FLOTILLA_ALERTS_MEDIUM_NOTIFY_AFTER_SECS";
            notify_give_up_after_secs: u64 = "FLOTILLA_ALERTS_NOTIFY_GIVE_UP_AFTER_SECS";
            public_url: String = "FLOTILLA_ALERTS_PUBLIC_URL";
            tls_endpoints: Vec<String> = "FLOTILLA_ALERTS_TLS_ENDPOINTS";
            tls_check_interval_secs: u64 = "FLOTILLA_ALERTS_TLS_CHECK_INTERVAL_SECS";
            tls_warn_days: u32 = "FLOTILLA_ALERTS_TLS_WARN_DAYS";
            tls_timeout_secs: u64 = "FLOTILLA_ALERTS_TLS_TIMEOUT_SECS";
            // issue 17 §2: host certificates.
            certificate_warn_days: u32 = "FLOTILLA_ALERTS_CERTIFICATE_WARN_DAYS";
            certificate_hard_days: u32 = "FLOTILLA_ALERTS_CERTIFICATE_HARD_DAYS";
        }
        file_only {
            rules: BTreeMap<String, RuleOverride> = "a table per rule ([alerts.rules.<rule>])";
        }
    }

    /// The relay's backups of its own database (`[backup]`, see `config/backup.rs`).
    section backup: RelayBackupConfig => BackupOverrides {
        env {
            enabled: bool = "FLOTILLA_BACKUP_ENABLED";
            dir: Option<PathBuf> = "FLOTILLA_BACKUP_DIR", parse trimmed_path;
            interval_hours: u32 = "FLOTILLA_BACKUP_INTERVAL_HOURS",
                check |v| (1..=24 * 31).contains(v), "expected 1 to 744 hours";
            compression_level: i32 = "FLOTILLA_BACKUP_COMPRESSION_LEVEL",
                check |v| (1..=19).contains(v), "expected 1 to 19";
            pg_dump: Option<PathBuf> = "FLOTILLA_BACKUP_PG_DUMP", parse trimmed_path;
            age_recipients: Vec<String> = "FLOTILLA_BACKUP_AGE_RECIPIENTS";
            age_recipients_file: Option<PathBuf> = "FLOTILLA_BACKUP_AGE_RECIPIENTS_FILE",
                parse trimmed_path;
        }
        section retention: RelayRetention => RetentionOverrides {
            env {
                daily: u32 = "FLOTILLA_BACKUP_RETENTION_DAILY";
                weekly: u32 = "FLOTILLA_BACKUP_RETENTION_WEEKLY";
                monthly: u32 = "FLOTILLA_BACKUP_RETENTION_MONTHLY";
            }
        }
        file_only {
            destinations: Vec<DestinationConfig> = "a list of tables (name, type, path or \
                bucket, credential files, ...), as in agent.toml";
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
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                RelayConfig::from_toml(path, &text)?
            }
            None => RelayConfig::default(),
        };
        overrides.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that the types alone cannot: the table's checks, then `[alerts]`'s.
    /// `[notify]` is checked by `Notifier::start`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_ranges()?;
        if let Err((key, value, expected)) = self.alerts.validate() {
            return Err(ConfigError::Value {
                key,
                value,
                expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
