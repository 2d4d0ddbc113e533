//! The agent's settings: `agent.toml`, then `FLOTILLA_*` environment variables over it.

use flotilla_shared::command::CommandKind;
use flotilla_shared::update::UpdatePhase;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The smallest `max_outbox_events` accepted.
const MIN_OUTBOX_EVENTS: usize = 100;

/// Where the agent keeps its state when nothing else is configured.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flotilla";

/// Everything `agent.toml` may set. Every key is optional; each can also be given as an
/// environment variable `FLOTILLA_<KEY IN UPPER CASE>`, which wins over the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Directory holding `agent.db` (identity, command journal, outbox). Created if missing.
    pub state_dir: PathBuf,
    /// Relay base URL (`https://relay.example.com`); overrides the URL the agent enrolled with.
    pub relay_url: Option<String>,
    /// Allow plain `ws://` to hosts other than loopback. Off by default: commands and
    /// credentials would travel unencrypted.
    pub allow_insecure_ws: bool,
    /// PEM file of CA certificates trusted for `wss://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Docker endpoint (`unix:///var/run/docker.sock`, `tcp://host:2375`); default: `DOCKER_HOST`
    /// or the local socket.
    pub docker_host: Option<String>,
    /// Command kinds this agent accepts (default: every known kind). Others are rejected with
    /// `policy_denied`.
    pub allowed_commands: Vec<CommandKind>,
    /// `key=value`: manage ONLY containers carrying this Docker label. Every other container is
    /// invisible, exactly like one labelled `flotilla.ignore=true`.
    pub only_label: Option<String>,
    /// Paths whose file systems are always reported in heartbeats (the file system holding
    /// each path), even pseudo ones like tmpfs that are otherwise left out. Canonicalised and
    /// deduplicated when the heartbeat task starts; a path that cannot be resolved then is
    /// warned about once and skipped.
    pub disk_paths: Vec<String>,
    /// Largest websocket message accepted from the relay, and sent to it, in bytes (lowered to
    /// the relay's own limit when its welcome announces a smaller one).
    pub max_frame_bytes: usize,
    /// Events the outbox keeps while the relay is unreachable; beyond it the oldest are
    /// dropped and one event reports how many. Command results are never dropped.
    pub max_outbox_events: usize,
    /// Starts of one container within `restart_loop_window_secs` that count as a restart loop.
    pub restart_loop_threshold: u32,
    /// Window for restart-loop detection, in seconds.
    pub restart_loop_window_secs: u64,
    /// Directory of the daily rotating log files (`flotilla-agent.YYYY-MM-DD.log`) of
    /// `flotilla-agent run`. Default: systemd's `LOGS_DIRECTORY` when set, else no files (stderr
    /// only, which is always written).
    pub log_dir: Option<PathBuf>,
    /// `text` or `json`, for the files and stderr alike.
    pub log_format: flotilla_daemon::logging::LogFormat,
    /// Daily log files kept; older ones are deleted.
    pub log_keep_files: usize,
    /// Test hook: results and events are written to the outbox but not sent while set.
    pub test_hold_outbox: bool,
    /// Test hook: an update that reaches this phase (e.g. `old_stopped`) journals it, creates
    /// `<state_dir>/update-paused-<phase>` and then waits forever, so a test can kill the agent
    /// there. Environment only (`FLOTILLA_TEST_UPDATE_PAUSE_AT`).
    #[serde(skip)]
    pub test_update_pause_at: Option<UpdatePhase>,
    /// `container.update` settings.
    pub update: UpdateConfig,
    /// Database backups.
    pub backup: crate::backup::config::BackupConfig,
    /// `agent.upgrade` settings.
    pub upgrade: UpgradeConfig,
}

/// `[upgrade]`: the agent's side of signed self-update (`agent.upgrade`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeConfig {
    /// Seconds the root updater (flotilla-agent-updater.path/.service) gets to take an upgrade
    /// request (it answers `accepted`, then has its own 10-minute limit); past that the command
    /// fails and the request is withdrawn.
    pub updater_pickup_secs: u64,
    /// Longest the download of a new agent build from the relay may take, in seconds.
    pub download_timeout_secs: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            updater_pickup_secs: crate::upgrade::DEFAULT_UPDATER_PICKUP_SECS,
            download_timeout_secs: crate::upgrade::DEFAULT_DOWNLOAD_TIMEOUT_SECS,
        }
    }
}

impl UpgradeConfig {
    /// The handler's timing.
    pub fn settings(&self) -> crate::upgrade::UpgradeSettings {
        crate::upgrade::UpgradeSettings {
            updater_pickup: std::time::Duration::from_secs(self.updater_pickup_secs),
            download_timeout: std::time::Duration::from_secs(self.download_timeout_secs),
            ..Default::default()
        }
    }
}

/// `[update]`: image policy and registry credentials for `container.update`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Images a container may be updated to: registry hosts (`ghcr.io`, `127.0.0.1:5000`) or
    /// repository prefixes (`registry.example.com/team/`). Empty: only the registry the
    /// container's current image comes from.
    pub allowed_images: Vec<String>,
    /// Docker config file whose `auths` are used for pulls the `registries` below do not
    /// cover. Default: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Credentials per registry.
    pub registries: Vec<RegistryAuth>,
}

/// `[[update.registries]]`: a username and a file holding the password (or token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// Registry host as in image references: `ghcr.io`, `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    pub username: String,
    pub password_file: PathBuf,
}

impl UpdateConfig {
    /// The docker config file to read credentials from, if any.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.docker_config {
            return Some(p.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            relay_url: None,
            allow_insecure_ws: false,
            ca_file: None,
            docker_host: None,
            allowed_commands: CommandKind::ALL.to_vec(),
            only_label: None,
            disk_paths: Vec::new(),
            max_frame_bytes: flotilla_shared::DEFAULT_MAX_FRAME_BYTES,
            max_outbox_events: crate::state::DEFAULT_MAX_OUTBOX_EVENTS,
            restart_loop_threshold: 3,
            restart_loop_window_secs: 300,
            log_dir: None,
            log_format: flotilla_daemon::logging::LogFormat::Text,
            log_keep_files: flotilla_daemon::logging::DEFAULT_KEEP_FILES,
            test_hold_outbox: false,
            test_update_pause_at: None,
            update: UpdateConfig::default(),
            backup: Default::default(),
            upgrade: UpgradeConfig::default(),
        }
    }
}

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
    #[error("invalid {key} {value:?}: {expected}")]
    Value {
        key: &'static str,
        value: String,
        expected: String,
    },
}

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
                    message,
                })?
            }
            None => AgentConfig::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses `agent.toml` text; the error names the offending key.
    pub fn from_toml(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Applies `FLOTILLA_<KEY>` overrides read through `get` (a parameter so tests need not
    /// touch the process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let env_err = |name: &str, value: &str, expected: &str| ConfigError::Env {
            name: name.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("FLOTILLA_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = get("FLOTILLA_RELAY_URL") {
            self.relay_url = Some(v.trim().to_string());
        }
        if let Some(v) = get("FLOTILLA_ALLOW_INSECURE_WS") {
            self.allow_insecure_ws = parse_bool(&v).ok_or_else(|| {
                env_err("FLOTILLA_ALLOW_INSECURE_WS", &v, "expected true or false")
            })?;
        }
        if let Some(v) = get("FLOTILLA_CA_FILE") {
            self.ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("FLOTILLA_DOCKER_HOST") {
            self.docker_host = Some(v.trim().to_string());
        }
        if let Some(v) = get("FLOTILLA_ALLOWED_COMMANDS") {
            let mut kinds = Vec::new();
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let kind: CommandKind =
                    part.parse()
                        .map_err(|e: flotilla_shared::command::UnknownKind| {
                            env_err("FLOTILLA_ALLOWED_COMMANDS", &v, &e.to_string())
                        })?;
                kinds.push(kind);
            }
            self.allowed_commands = kinds;
        }
        if let Some(v) = get("FLOTILLA_ONLY_LABEL") {
            self.only_label = Some(v.trim().to_string());
        }
        if let Some(v) = get("FLOTILLA_DISK_PATHS") {
            self.disk_paths = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(v) = get("FLOTILLA_MAX_FRAME_BYTES") {
            self.max_frame_bytes = v.trim().parse().map_err(|_| {
                env_err("FLOTILLA_MAX_FRAME_BYTES", &v, "expected a number of bytes")
            })?;
        }
        if let Some(v) = get("FLOTILLA_MAX_OUTBOX_EVENTS") {
            self.max_outbox_events = v.trim().parse().map_err(|_| {
                env_err(
                    "FLOTILLA_MAX_OUTBOX_EVENTS",
                    &v,
                    "expected a number of events",
                )
            })?;
        }
        if let Some(v) = get("FLOTILLA_RESTART_LOOP_THRESHOLD") {
            self.restart_loop_threshold = v.trim().parse().map_err(|_| {
                env_err(
                    "FLOTILLA_RESTART_LOOP_THRESHOLD",
                    &v,
                    "expected a whole number",
                )
            })?;
        }
        if let Some(v) = get("FLOTILLA_RESTART_LOOP_WINDOW_SECS") {
            self.restart_loop_window_secs = v.trim().parse().map_err(|_| {
                env_err(
                    "FLOTILLA_RESTART_LOOP_WINDOW_SECS",
                    &v,
                    "expected a number of seconds",
                )
            })?;
        }
        if let Some(v) = get("FLOTILLA_UPDATE_ALLOWED_IMAGES") {
            self.update.allowed_images = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(v) = get("FLOTILLA_UPDATE_DOCKER_CONFIG") {
            self.update.docker_config = Some(PathBuf::from(v.trim()));
        }
        if let Some(v) = get("FLOTILLA_UPGRADE_UPDATER_PICKUP_SECS") {
            self.upgrade.updater_pickup_secs = v.trim().parse().map_err(|_| {
                env_err(
                    "FLOTILLA_UPGRADE_UPDATER_PICKUP_SECS",
                    &v,
                    "expected a number of seconds",
                )
            })?;
        }
        if let Some(v) = get("FLOTILLA_UPGRADE_DOWNLOAD_TIMEOUT_SECS") {
            self.upgrade.download_timeout_secs = v.trim().parse().map_err(|_| {
                env_err(
                    "FLOTILLA_UPGRADE_DOWNLOAD_TIMEOUT_SECS",
                    &v,
                    "expected a number of seconds",
                )
            })?;
        }
        if let Some(v) = get("FLOTILLA_BACKUP_ENABLED") {
            self.backup.enabled = parse_bool(&v)
                .ok_or_else(|| env_err("FLOTILLA_BACKUP_ENABLED", &v, "expected true or false"))?;
        }
        if let Some(v) = get("FLOTILLA_BACKUP_DISCOVER") {
            self.backup.discover = parse_bool(&v)
                .ok_or_else(|| env_err("FLOTILLA_BACKUP_DISCOVER", &v, "expected true or false"))?;
        }
        if let Some(v) = get("FLOTILLA_BACKUP_DIR") {
            self.backup.dir = Some(PathBuf::from(v.trim()));
        }
        if let Some(v) = get("FLOTILLA_BACKUP_SCHEDULE") {
            self.backup.schedule = v.trim().to_string();
        }
        if let Some(v) = get("FLOTILLA_BACKUP_STATUS_FILE") {
            self.backup.status_file = Some(PathBuf::from(v.trim()));
        }
        if let Some(v) = get("FLOTILLA_BACKUP_WATCH_STATUS_FILE") {
            self.backup.watch_status_file = Some(PathBuf::from(v.trim()));
        }
        if let Some(v) = get("FLOTILLA_BACKUP_WATCH_INTERVAL_SECS") {
            self.backup.watch_interval_secs = v.trim().parse().map_err(|_| {
                env_err(
                    "FLOTILLA_BACKUP_WATCH_INTERVAL_SECS",
                    &v,
                    "expected a number of seconds",
                )
            })?;
        }
        if let Some(v) = get("FLOTILLA_LOG_DIR") {
            self.log_dir = Some(PathBuf::from(v.trim()));
        }
        if self.log_dir.is_none() {
            self.log_dir = flotilla_daemon::logging::systemd_logs_directory(get);
        }
        if let Some(v) = get("FLOTILLA_LOG_FORMAT") {
            self.log_format = v
                .parse()
                .map_err(|e: String| env_err("FLOTILLA_LOG_FORMAT", &v, &e))?;
        }
        if let Some(v) = get("FLOTILLA_LOG_KEEP_FILES") {
            self.log_keep_files = v.trim().parse().map_err(|_| {
                env_err("FLOTILLA_LOG_KEEP_FILES", &v, "expected a number of files")
            })?;
        }
        if let Some(v) = get("FLOTILLA_TEST_UPDATE_PAUSE_AT") {
            self.test_update_pause_at = Some(
                v.trim()
                    .parse()
                    .map_err(|e: String| env_err("FLOTILLA_TEST_UPDATE_PAUSE_AT", &v, &e))?,
            );
        }
        if let Some(v) = get("FLOTILLA_TEST_HOLD_OUTBOX") {
            self.test_hold_outbox = parse_bool(&v).ok_or_else(|| {
                env_err("FLOTILLA_TEST_HOLD_OUTBOX", &v, "expected true or false")
            })?;
        }
        Ok(())
    }

    /// Checks values whose type is right but whose content may not be.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(label) = &self.only_label {
            parse_only_label(label)?;
        }
        if self.max_frame_bytes < 16 * 1024 {
            return Err(ConfigError::Value {
                key: "max_frame_bytes",
                value: self.max_frame_bytes.to_string(),
                expected: "expected at least 16384 bytes".into(),
            });
        }
        if self.max_outbox_events < MIN_OUTBOX_EVENTS {
            return Err(ConfigError::Value {
                key: "max_outbox_events",
                value: self.max_outbox_events.to_string(),
                expected: format!("expected at least {MIN_OUTBOX_EVENTS} events"),
            });
        }
        if self.restart_loop_threshold < 2 {
            return Err(ConfigError::Value {
                key: "restart_loop_threshold",
                value: self.restart_loop_threshold.to_string(),
                expected: "expected at least 2 starts".into(),
            });
        }
        if self.restart_loop_window_secs == 0 {
            return Err(ConfigError::Value {
                key: "restart_loop_window_secs",
                value: "0".into(),
                expected: "expected at least 1 second".into(),
            });
        }
        if let Err(expected) = flotilla_daemon::logging::check_keep_files(self.log_keep_files) {
            return Err(ConfigError::Value {
                key: "log_keep_files",
                value: self.log_keep_files.to_string(),
                expected,
            });
        }
        for r in &self.update.registries {
            if r.registry.trim().is_empty() || r.registry.contains('/') {
                return Err(ConfigError::Value {
                    key: "update.registries.registry",
                    value: r.registry.clone(),
                    expected: "expected a registry host such as ghcr.io or 127.0.0.1:5000".into(),
                });
            }
        }
        crate::backup::validate_config(&self.backup).map_err(ConfigError::Backup)?;
        // Below 5 s a busy host's path unit and process start alone can miss it.
        if !(5..=3600).contains(&self.upgrade.updater_pickup_secs) {
            return Err(ConfigError::Value {
                key: "upgrade.updater_pickup_secs",
                value: self.upgrade.updater_pickup_secs.to_string(),
                expected: "expected 5 to 3600 seconds".into(),
            });
        }
        if !(10..=86_400).contains(&self.upgrade.download_timeout_secs) {
            return Err(ConfigError::Value {
                key: "upgrade.download_timeout_secs",
                value: self.upgrade.download_timeout_secs.to_string(),
                expected: "expected 10 to 86400 seconds".into(),
            });
        }
        if let Some(url) = &self.relay_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Value {
                    key: "relay_url",
                    value: url.clone(),
                    expected: "expected an http:// or https:// URL".into(),
                });
            }
        }
        Ok(())
    }

    /// `only_label` split into key and value (validated by `load`).
    pub fn only_label_pair(&self) -> Option<(String, String)> {
        self.only_label
            .as_deref()
            .and_then(|l| parse_only_label(l).ok())
    }
}

fn parse_only_label(label: &str) -> Result<(String, String), ConfigError> {
    let bad = || ConfigError::Value {
        key: "only_label",
        value: label.to_string(),
        expected: "expected a Docker label as key=value".into(),
    };
    let (k, v) = label.split_once('=').ok_or_else(bad)?;
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() {
        return Err(bad());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Accepts the spellings people use for booleans in environment variables.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_config_documents_every_setting_with_its_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        let text = std::fs::read_to_string(&path).expect("packaging/agent.toml");
        let parsed = AgentConfig::from_toml(&text).expect("example parses");
        assert_eq!(
            parsed,
            AgentConfig::default(),
            "example values are the defaults"
        );
        let defaults = serde_json::to_value(AgentConfig::default()).unwrap();
        for key in defaults.as_object().unwrap().keys() {
            assert!(
                text.contains(&format!("\n{key} = "))
                    || text.contains(&format!("\n# {key} = "))
                    || text.contains(&format!("\n[{key}]\n")),
                "{key} is not documented in packaging/agent.toml"
            );
        }
    }

    use super::*;
    use std::collections::HashMap;

    fn with_env(pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut c = AgentConfig::default();
        c.apply_env(|n| env.get(n).cloned())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn disk_paths_from_file_and_env() {
        let c = AgentConfig::from_toml("disk_paths = [\"/srv/data\"]\n").unwrap();
        assert_eq!(c.disk_paths, vec!["/srv/data".to_string()]);
        let c = with_env(&[("FLOTILLA_DISK_PATHS", "/a, /b/c,")]).unwrap();
        assert_eq!(c.disk_paths, vec!["/a".to_string(), "/b/c".to_string()]);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = AgentConfig::from_toml("").unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.allowed_commands.len(), CommandKind::ALL.len());
        assert_eq!(c.max_frame_bytes, 1024 * 1024);
    }

    #[test]
    fn file_keys_parse() {
        let c = AgentConfig::from_toml(
            r#"
            state_dir = "/tmp/x"
            relay_url = "http://127.0.0.1:8700"
            allowed_commands = ["ping", "container.list"]
            only_label = "flotilla.test=abc"
            restart_loop_threshold = 4
            test_hold_outbox = true
            "#,
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            c.allowed_commands,
            vec![CommandKind::Ping, CommandKind::ContainerList]
        );
        assert_eq!(
            c.only_label_pair(),
            Some(("flotilla.test".into(), "abc".into()))
        );
        assert!(c.test_hold_outbox);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = AgentConfig::from_toml("heartbeat_secs = 3").unwrap_err();
        assert!(e.contains("heartbeat_secs"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = AgentConfig::from_toml("max_frame_bytes = \"big\"").unwrap_err();
        assert!(e.contains("max_frame_bytes"), "{e}");
        let e = AgentConfig::from_toml("allowed_commands = [\"container.nuke\"]").unwrap_err();
        assert!(e.contains("container.nuke"), "{e}");
    }

    #[test]
    fn env_overrides_and_errors_name_the_variable() {
        let c = with_env(&[
            ("FLOTILLA_TEST_HOLD_OUTBOX", "1"),
            ("FLOTILLA_ALLOWED_COMMANDS", "ping, container.logs"),
            ("FLOTILLA_RESTART_LOOP_WINDOW_SECS", "60"),
            ("FLOTILLA_MAX_OUTBOX_EVENTS", "500"),
        ])
        .unwrap();
        assert_eq!(c.max_outbox_events, 500);
        assert_eq!(AgentConfig::default().max_outbox_events, 10_000);
        let e = with_env(&[("FLOTILLA_MAX_OUTBOX_EVENTS", "5")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_outbox_events"), "{e}");
        assert!(c.test_hold_outbox);
        assert_eq!(
            c.allowed_commands,
            vec![CommandKind::Ping, CommandKind::ContainerLogs]
        );
        assert_eq!(c.restart_loop_window_secs, 60);

        let e = with_env(&[("FLOTILLA_MAX_FRAME_BYTES", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLOTILLA_MAX_FRAME_BYTES") && e.contains("lots"),
            "{e}"
        );
        let e = with_env(&[("FLOTILLA_ALLOWED_COMMANDS", "ping,shell")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLOTILLA_ALLOWED_COMMANDS") && e.contains("shell"),
            "{e}"
        );
        let e = with_env(&[("FLOTILLA_TEST_HOLD_OUTBOX", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLOTILLA_TEST_HOLD_OUTBOX"), "{e}");
        let e = with_env(&[("FLOTILLA_ONLY_LABEL", "novalue")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only_label") && e.contains("novalue"), "{e}");
    }

    #[test]
    fn log_settings_from_file_env_and_systemd() {
        let c = AgentConfig::from_toml(
            "log_dir = \"/var/log/x\"\nlog_format = \"json\"\nlog_keep_files = 3\n",
        )
        .unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/var/log/x")));
        assert_eq!(c.log_format, flotilla_daemon::logging::LogFormat::Json);
        assert_eq!(c.log_keep_files, 3);
        let d = AgentConfig::default();
        assert_eq!(
            (d.log_dir, d.log_format, d.log_keep_files),
            (None, flotilla_daemon::logging::LogFormat::Text, 14)
        );

        // systemd's LogsDirectory= is the default; FLOTILLA_LOG_DIR and the file win over it.
        let c = with_env(&[("LOGS_DIRECTORY", "/var/log/flotilla")]).unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/var/log/flotilla")));
        let c = with_env(&[
            ("LOGS_DIRECTORY", "/var/log/flotilla"),
            ("FLOTILLA_LOG_DIR", "/srv/logs"),
            ("FLOTILLA_LOG_FORMAT", "JSON"),
            ("FLOTILLA_LOG_KEEP_FILES", "30"),
        ])
        .unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/srv/logs")));
        assert_eq!(c.log_format, flotilla_daemon::logging::LogFormat::Json);
        assert_eq!(c.log_keep_files, 30);
        let mut c = AgentConfig::from_toml("log_dir = \"/var/log/x\"\n").unwrap();
        c.apply_env(|k| (k == "LOGS_DIRECTORY").then(|| "/var/log/flotilla".to_string()))
            .unwrap();
        assert_eq!(c.log_dir, Some(PathBuf::from("/var/log/x")));
    }

    #[test]
    fn bad_log_settings_are_named() {
        let e = AgentConfig::from_toml("log_format = \"xml\"").unwrap_err();
        assert!(e.contains("log_format") && e.contains("xml"), "{e}");
        let e = with_env(&[("FLOTILLA_LOG_FORMAT", "yaml")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLOTILLA_LOG_FORMAT") && e.contains("yaml") && e.contains("json"),
            "{e}"
        );
        let e = with_env(&[("FLOTILLA_LOG_KEEP_FILES", "many")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLOTILLA_LOG_KEEP_FILES") && e.contains("many"),
            "{e}"
        );
        let e = with_env(&[("FLOTILLA_LOG_KEEP_FILES", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_keep_files"), "{e}");
    }

    #[test]
    fn upgrade_settings_from_file_and_env() {
        let c = AgentConfig::from_toml(
            "[upgrade]\nupdater_pickup_secs = 5\ndownload_timeout_secs = 60\n",
        )
        .unwrap();
        assert_eq!(c.upgrade.updater_pickup_secs, 5);
        assert_eq!(
            c.upgrade.settings().download_timeout,
            std::time::Duration::from_secs(60)
        );
        assert!(c.allowed_commands.contains(&CommandKind::AgentUpgrade));
        let c = with_env(&[("FLOTILLA_UPGRADE_UPDATER_PICKUP_SECS", "7")]).unwrap();
        assert_eq!(c.upgrade.settings().updater_pickup.as_secs(), 7);
        let e = with_env(&[("FLOTILLA_UPGRADE_UPDATER_PICKUP_SECS", "4")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upgrade.updater_pickup_secs") && e.contains("5 to 3600"),
            "{e}"
        );
        let e = with_env(&[("FLOTILLA_UPGRADE_DOWNLOAD_TIMEOUT_SECS", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLOTILLA_UPGRADE_DOWNLOAD_TIMEOUT_SECS"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = AgentConfig::load(Some(Path::new("/nonexistent/agent.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/agent.toml"), "{e}");
    }
}
