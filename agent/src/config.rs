//! The agent's settings: `agent.toml`, then `FLOTILLA_*` environment variables over it, then
//! the checks the types alone cannot make.
//!
//! Every setting is one entry of the table below (`flotilla_daemon::settings!`, the macro the
//! relay's table uses too): key, type, environment variable, and for top-level keys the
//! default, doc and range check. `AgentConfig`, its defaults, the `Overrides` read from the
//! environment, the merge, the range checks and [`SETTINGS`] are generated from it, and a test
//! (`config/tests.rs`) fails when `packaging/agent.toml` and the table drift apart. The keys of
//! `[update]`, `[upgrade]` (`config/update.rs`, `config/upgrade.rs`), `[certificates]`
//! (`certs/config.rs`) and `[backup]` (`backup/config.rs`) keep their fields, defaults and
//! docs in their own structs; the table names their variables, and which keys (lists of
//! tables) only the file can set.

mod update;
mod upgrade;
// issue 17 part 6
mod upkeep;

// issue 17 §2: certificates on the host (`[certificates]`, kept beside their reader).
pub use crate::certs::config::{CertificatesConfig, CERTBOT_GLOB};
pub use update::{RegistryAuth, UpdateConfig};
pub use upgrade::UpgradeConfig;
pub use upkeep::{AutohealConfig, ImagesConfig};

// --- compose (issue 17, part 1) ---
mod compose;
pub use compose::ComposeConfig;
// --- end compose ---

use crate::backup::config::{BackupConfig, DestinationConfig, JobConfig, RetentionConfig};
use flotilla_daemon::logging::LogFormat;
use flotilla_daemon::settings::{trimmed_path, EnvError, RangeError};
use flotilla_shared::command::CommandKind;
use flotilla_shared::update::UpdatePhase;
use std::path::{Path, PathBuf};

/// Where the agent keeps its state when nothing else is configured.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flotilla";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {name} {value:?}: {expected}")]
    Env {
        name: String,
        value: String,
        expected: String,
    },
    #[error("invalid backup settings: {0}")]
    Backup(String),
    /// A value of the right type that is not accepted; `env` is the key's variable.
    #[error("invalid {key} {value:?}{}: {expected}", or_variable(*.env))]
    Value {
        key: &'static str,
        env: Option<&'static str>,
        value: String,
        expected: String,
    },
}

/// Where else than agent.toml a rejected value may have come from.
fn or_variable(env: Option<&'static str>) -> String {
    env.map(|name| format!(" (agent.toml or {name})"))
        .unwrap_or_default()
}

impl ConfigError {
    /// A rejected value of `key`; the error also names the key's variable, if it has one.
    fn value(key: &'static str, value: String, expected: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            key,
            env: flotilla_daemon::settings::env_name_of(SETTINGS, key),
            value,
            expected: expected.into(),
        }
    }
}

impl From<EnvError> for ConfigError {
    fn from(e: EnvError) -> Self {
        ConfigError::Env {
            name: e.name.to_string(),
            value: e.value,
            expected: match e.detail {
                Some(detail) => format!("{} ({detail})", e.expected),
                None => e.expected.to_string(),
            },
        }
    }
}

impl From<RangeError> for ConfigError {
    fn from(e: RangeError) -> Self {
        ConfigError::Value {
            key: e.key,
            env: e.env,
            value: e.value,
            expected: e.expected.to_string(),
        }
    }
}

flotilla_daemon::settings! {
    /// Everything `agent.toml` may set. Every key is optional; each can also be given as an
    /// environment variable (`FLOTILLA_<KEY>`, `FLOTILLA_<SECTION>_<KEY>`), which wins over the
    /// file, except the lists of tables the table marks file-only.
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct AgentConfig;

    /// Settings given in the environment; `None` = not given.
    pub struct Overrides {}

    error ConfigError;

    top {
        /// Directory holding `agent.db` (identity, command journal, outbox). Created if missing.
        state_dir: PathBuf = PathBuf::from(DEFAULT_STATE_DIR), env "FLOTILLA_STATE_DIR";
        /// Relay base URL (`https://relay.example.com`); overrides the URL the agent enrolled
        /// with.
        relay_url: Option<String> = None, env "FLOTILLA_RELAY_URL";
        /// Several relay base URLs of one fleet, tried in turn: on a failed connect, a refusal
        /// or a dropped link the agent moves to the next (after `relay_url` when both are set).
        /// Empty: `relay_url`, else the URL the agent enrolled with.
        relay_urls: Vec<String> = Vec::new(), env "FLOTILLA_RELAY_URLS";
        /// Allow plain `ws://` to hosts other than loopback. Off by default: commands and
        /// credentials would travel unencrypted.
        allow_insecure_ws: bool = false, env "FLOTILLA_ALLOW_INSECURE_WS";
        /// PEM file of CA certificates trusted for `wss://` instead of the system's roots.
        ca_file: Option<PathBuf> = None, env "FLOTILLA_CA_FILE";
        /// Docker endpoint (`unix:///var/run/docker.sock`, `tcp://host:2375`); default:
        /// `DOCKER_HOST` or the local socket.
        docker_host: Option<String> = None, env "FLOTILLA_DOCKER_HOST";
        /// Command kinds this agent accepts (default: every known kind). Others are rejected
        /// with `policy_denied`.
        allowed_commands: Vec<CommandKind> = CommandKind::ALL.to_vec(),
            env "FLOTILLA_ALLOWED_COMMANDS";
        /// `key=value`: manage ONLY containers carrying this Docker label. Every other
        /// container is invisible, exactly like one labelled `flotilla.ignore=true`.
        only_label: Option<String> = None, env "FLOTILLA_ONLY_LABEL";
        /// Paths whose file systems are always reported in heartbeats (the file system holding
        /// each path), even pseudo ones like tmpfs that are otherwise left out. Canonicalised
        /// and deduplicated when the heartbeat task starts; a path that cannot be resolved then
        /// is warned about once and skipped.
        disk_paths: Vec<String> = Vec::new(), env "FLOTILLA_DISK_PATHS";
        /// Largest websocket message accepted from the relay, and sent to it, in bytes (lowered
        /// to the relay's own limit when its welcome announces a smaller one).
        max_frame_bytes: usize = flotilla_shared::DEFAULT_MAX_FRAME_BYTES,
            env "FLOTILLA_MAX_FRAME_BYTES",
            check |v| *v >= 16 * 1024, "expected at least 16384 bytes";
        /// Events the outbox keeps while the relay is unreachable; beyond it the oldest are
        /// dropped and one event reports how many. Command results are never dropped.
        max_outbox_events: usize = crate::state::DEFAULT_MAX_OUTBOX_EVENTS,
            env "FLOTILLA_MAX_OUTBOX_EVENTS",
            check |v| *v >= 100, "expected at least 100 events";
        /// Starts of one container within `restart_loop_window_secs` that count as a restart
        /// loop.
        restart_loop_threshold: u32 = 3, env "FLOTILLA_RESTART_LOOP_THRESHOLD",
            check |v| *v >= 2, "expected at least 2 starts";
        /// Window for restart-loop detection, in seconds.
        restart_loop_window_secs: u64 = 300, env "FLOTILLA_RESTART_LOOP_WINDOW_SECS",
            check |v| *v > 0, "expected at least 1 second";
        /// Directory of the daily rotating log files (`flotilla-agent.YYYY-MM-DD.log`) of
        /// `flotilla-agent run`. Default: systemd's `LOGS_DIRECTORY` when set, else no files
        /// (stderr only, which is always written).
        log_dir: Option<PathBuf> = None, env "FLOTILLA_LOG_DIR", parse trimmed_path;
        /// `text` or `json`, for the files and stderr alike.
        log_format: LogFormat = LogFormat::Text, env "FLOTILLA_LOG_FORMAT";
        /// Daily log files kept; older ones are deleted.
        log_keep_files: usize = flotilla_daemon::logging::DEFAULT_KEEP_FILES,
            env "FLOTILLA_LOG_KEEP_FILES",
            check |v| flotilla_daemon::logging::check_keep_files(*v).is_ok(),
            "expected 1 to 3650 files";
        /// Test hook: results and events are written to the outbox but not sent while set.
        test_hold_outbox: bool = false, env "FLOTILLA_TEST_HOLD_OUTBOX";
        /// Test hook: an update that reaches this phase (e.g. `old_stopped`) journals it,
        /// creates `<state_dir>/update-paused-<phase>` and then waits forever, so a test can
        /// kill the agent there. Environment only (`FLOTILLA_TEST_UPDATE_PAUSE_AT`).
        #[serde(skip)]
        test_update_pause_at: Option<UpdatePhase> = None,
            env_only "FLOTILLA_TEST_UPDATE_PAUSE_AT";
    }

    /// `container.update` settings.
    section update: UpdateConfig => UpdateOverrides {
        env {
            allowed_images: Vec<String> = "FLOTILLA_UPDATE_ALLOWED_IMAGES";
            docker_config: Option<PathBuf> = "FLOTILLA_UPDATE_DOCKER_CONFIG", parse trimmed_path;
        }
        file_only {
            registries: Vec<RegistryAuth> = "a list of tables (registry, username, \
                password_file); the password is read from password_file";
        }
    }

    /// Database backups.
    section backup: BackupConfig => BackupOverrides {
        env {
            enabled: bool = "FLOTILLA_BACKUP_ENABLED";
            dir: Option<PathBuf> = "FLOTILLA_BACKUP_DIR", parse trimmed_path;
            discover: bool = "FLOTILLA_BACKUP_DISCOVER";
            schedule: String = "FLOTILLA_BACKUP_SCHEDULE";
            jitter_secs: u64 = "FLOTILLA_BACKUP_JITTER_SECS";
            compression_level: i32 = "FLOTILLA_BACKUP_COMPRESSION_LEVEL";
            status_file: Option<PathBuf> = "FLOTILLA_BACKUP_STATUS_FILE", parse trimmed_path;
            watch_status_file: Option<PathBuf> = "FLOTILLA_BACKUP_WATCH_STATUS_FILE",
                parse trimmed_path;
            watch_interval_secs: u64 = "FLOTILLA_BACKUP_WATCH_INTERVAL_SECS";
            dump_timeout_secs: u64 = "FLOTILLA_BACKUP_DUMP_TIMEOUT_SECS";
            age_recipients: Vec<String> = "FLOTILLA_BACKUP_AGE_RECIPIENTS";
            age_recipients_file: Option<PathBuf> = "FLOTILLA_BACKUP_AGE_RECIPIENTS_FILE",
                parse trimmed_path;
            // issue 17 part 4
            forget_after_secs: u64 = "FLOTILLA_BACKUP_FORGET_AFTER_SECS";
        }
        section retention: RetentionConfig => RetentionOverrides {
            env {
                daily: u32 = "FLOTILLA_BACKUP_RETENTION_DAILY";
                weekly: u32 = "FLOTILLA_BACKUP_RETENTION_WEEKLY";
                monthly: u32 = "FLOTILLA_BACKUP_RETENTION_MONTHLY";
            }
        }
        file_only {
            destinations: Vec<DestinationConfig> = "a list of tables (name, type, bucket, \
                credential files, ...)";
            jobs: Vec<JobConfig> = "a list of tables (name, container, engine, databases, ...)";
        }
    }

    /// `agent.upgrade` settings.
    section upgrade: UpgradeConfig => UpgradeOverrides {
        env {
            // Below 5 s a busy host's path unit and process start alone can miss it.
            updater_pickup_secs: u64 = "FLOTILLA_UPGRADE_UPDATER_PICKUP_SECS",
                check |v| (5..=3600).contains(v), "expected 5 to 3600 seconds";
            download_timeout_secs: u64 = "FLOTILLA_UPGRADE_DOWNLOAD_TIMEOUT_SECS",
                check |v| (10..=86_400).contains(v), "expected 10 to 86400 seconds";
        }
        file_only {}
    }

    // --- issue 17 part 6: auto-heal and image pruning ---
    section autoheal: AutohealConfig => AutohealOverrides {
        env {
            all: bool = "FLOTILLA_AUTOHEAL_ALL";
            unhealthy_for_secs: u64 = "FLOTILLA_AUTOHEAL_UNHEALTHY_FOR_SECS",
                check |v| (1..=86_400).contains(v), "expected 1 to 86400 seconds";
            max_restarts_per_hour: u32 = "FLOTILLA_AUTOHEAL_MAX_RESTARTS_PER_HOUR",
                check |v| (1..=60).contains(v), "expected 1 to 60 restarts";
            backoff_secs: u64 = "FLOTILLA_AUTOHEAL_BACKOFF_SECS",
                check |v| *v <= 3600, "expected 0 to 3600 seconds";
        }
        file_only {}
    }

    section images: ImagesConfig => ImagesOverrides {
        env {
            prune_interval_secs: u64 = "FLOTILLA_IMAGES_PRUNE_INTERVAL_SECS",
                check |v| *v == 0 || *v >= 60, "expected 0 (off) or at least 60 seconds";
            keep_rollback_days: u32 = "FLOTILLA_IMAGES_KEEP_ROLLBACK_DAYS",
                check |v| *v <= 3650, "expected 0 to 3650 days";
        }
        file_only {}
    }

    /// Compose projects' files (issue 17, part 1).
    section compose: ComposeConfig => ComposeOverrides {
        env {
            allowed_dirs: Vec<String> = "FLOTILLA_COMPOSE_ALLOWED_DIRS";
            command: String = "FLOTILLA_COMPOSE_COMMAND";
        }
        file_only {}
    }

    /// Certificates on the host (issue 17 §2): files, globs and local TLS endpoints.
    section certificates: CertificatesConfig => CertificatesOverrides {
        env {
            enabled: bool = "FLOTILLA_CERTIFICATES_ENABLED";
            certbot: bool = "FLOTILLA_CERTIFICATES_CERTBOT";
            paths: Vec<String> = "FLOTILLA_CERTIFICATES_PATHS";
            endpoints: Vec<String> = "FLOTILLA_CERTIFICATES_ENDPOINTS";
            interval_secs: u64 = "FLOTILLA_CERTIFICATES_INTERVAL_SECS",
                check |v| (1..=86_400).contains(v), "expected 1 to 86400 seconds";
        }
        file_only {}
    }
}

flotilla_shared::message_error!(
    /// agent.toml text that does not parse (toml's message, with line and column).
    pub InvalidToml
);

impl AgentConfig {
    /// Reads `path` (when given; a missing file is an error), then applies `FLOTILLA_*`
    /// environment overrides, then checks values that the types alone cannot.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: message.into(),
                })?
            }
            None => AgentConfig::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses `agent.toml` text; the error names the offending key.
    pub fn from_toml(text: &str) -> Result<AgentConfig, InvalidToml> {
        Self::from_toml_message(text).map_err(InvalidToml)
    }

    fn from_toml_message(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Applies the `FLOTILLA_*` overrides read through `get` (a parameter so tests need not
    /// touch the process environment); a blank variable counts as unset. Then, when no
    /// log directory is set, systemd's `LOGS_DIRECTORY`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        Overrides::from_env(&get)?.apply(self);
        Ok(())
    }

    /// Checks values whose type is right but whose content may not be: the table's ranges,
    /// then what a range cannot say.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_ranges()?;
        if let Some(label) = &self.only_label {
            parse_only_label(label)?;
        }
        for r in &self.update.registries {
            if r.registry.trim().is_empty() || r.registry.contains('/') {
                return Err(ConfigError::value(
                    "update.registries.registry",
                    r.registry.clone(),
                    "expected a registry host such as ghcr.io or 127.0.0.1:5000",
                ));
            }
        }
        crate::backup::validate_config(&self.backup).map_err(|e| backup_error(e.into()))?;
        for e in &self.certificates.endpoints {
            if let Err(reason) = crate::certs::parse_endpoint(e) {
                return Err(ConfigError::value(
                    "certificates.endpoints",
                    e.clone(),
                    reason,
                ));
            }
        }
        if let Some(url) = &self.relay_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::value(
                    "relay_url",
                    url.clone(),
                    "expected an http:// or https:// URL",
                ));
            }
        }
        for url in &self.relay_urls {
            if let Err(e) = crate::transport::normalise_relay_url(url) {
                return Err(ConfigError::value(
                    "relay_urls",
                    url.clone(),
                    format!("expected http:// or https:// URLs ({e:#})"),
                ));
            }
        }
        Ok(())
    }

    /// The relays this agent tries, in order: `relay_url` (else, when `relay_urls` is empty,
    /// the URL it enrolled with), then `relay_urls`, each once.
    pub fn relay_list(&self, enrolled: &str) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        match &self.relay_url {
            Some(url) => urls.push(url.clone()),
            None if self.relay_urls.is_empty() => urls.push(enrolled.to_string()),
            None => {}
        }
        for url in &self.relay_urls {
            let same = |u: &String| u.trim_end_matches('/') == url.trim_end_matches('/');
            if !urls.iter().any(same) {
                urls.push(url.clone());
            }
        }
        urls
    }

    /// `only_label` split into key and value (validated by `load`).
    pub fn only_label_pair(&self) -> Option<(String, String)> {
        self.only_label
            .as_deref()
            .and_then(|l| parse_only_label(l).ok())
    }
}

/// A failed check of `[backup]`: its message starts with the key, and gets the key's variable.
fn backup_error(message: String) -> ConfigError {
    let key = message.split([':', ' ']).next().unwrap_or_default();
    match flotilla_daemon::settings::env_name_of(SETTINGS, key) {
        Some(name) => ConfigError::Backup(format!("{message} (agent.toml or {name})")),
        None => ConfigError::Backup(message),
    }
}

fn parse_only_label(label: &str) -> Result<(String, String), ConfigError> {
    let bad = || {
        ConfigError::value(
            "only_label",
            label.to_string(),
            "expected a Docker label as key=value",
        )
    };
    let (k, v) = label.split_once('=').ok_or_else(bad)?;
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() {
        return Err(bad());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Accepts the spellings people use for booleans in environment variables (the settings
/// table's reading of a `bool` variable).
pub fn parse_bool(s: &str) -> Option<bool> {
    flotilla_daemon::settings::parse_bool(s)
}

#[cfg(test)]
mod tests;
