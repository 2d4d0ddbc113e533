//! Unit tests of the agent's settings: file keys, environment overrides, errors that name the
//! setting and its variable, and the checks that keep `packaging/agent.toml` and the settings
//! table in step.

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
    // Which entry is wrong, and what the known kinds are.
    assert!(
        e.contains("unknown command kind \"shell\"; known kinds: ping,"),
        "{e}"
    );
    let e = with_env(&[("FLOTILLA_TEST_UPDATE_PAUSE_AT", "sideways")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown update phase \"sideways\""), "{e}");
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
    let c =
        AgentConfig::from_toml("[upgrade]\nupdater_pickup_secs = 5\ndownload_timeout_secs = 60\n")
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

// === the settings table and packaging/agent.toml ===

use flotilla_daemon::settings::{example::drift, Env, Setting};
use std::collections::BTreeSet;

fn agent_toml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    std::fs::read_to_string(&path).expect("packaging/agent.toml")
}

#[test]
fn agent_toml_and_the_settings_table_agree() {
    let text = agent_toml();
    let problems = drift(&text, "agent.toml", SETTINGS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check sees drift in each direction.
    let renamed = text.replace(
        "Env: FLOTILLA_BACKUP_RETENTION_WEEKLY",
        "Env: FLOTILLA_RETENTION_WEEKLY",
    );
    assert_eq!(
        drift(&renamed, "agent.toml", SETTINGS),
        [
            "agent.toml gives backup.retention.weekly the Env: names \
             {\"FLOTILLA_RETENTION_WEEKLY\"}, the table {\"FLOTILLA_BACKUP_RETENTION_WEEKLY\"}",
            "agent.toml names the variable FLOTILLA_RETENTION_WEEKLY, which no setting has"
        ]
    );
    let added = text.replace(
        "[upgrade]\n",
        "[upgrade]\n# Soon.\n# channel = \"stable\"\n",
    );
    assert_eq!(
        drift(&added, "agent.toml", SETTINGS),
        ["upgrade.channel is in agent.toml but not in the settings table"]
    );
    let removed = text.replace(
        "# Window for restart-loop detection, in seconds.\n\
         # Env: FLOTILLA_RESTART_LOOP_WINDOW_SECS.\nrestart_loop_window_secs = 300\n",
        "",
    );
    assert_eq!(
        drift(&removed, "agent.toml", SETTINGS),
        ["restart_loop_window_secs is in the settings table but not in agent.toml"]
    );
    let promised = text.replace(
        "No environment variable (a list of tables).\nregistries = []",
        "Env: FLOTILLA_UPDATE_REGISTRIES.\nregistries = []",
    );
    assert_eq!(
        drift(&promised, "agent.toml", SETTINGS),
        [
            "agent.toml gives update.registries the Env: names \
             {\"FLOTILLA_UPDATE_REGISTRIES\"}, the table {}",
            "agent.toml names the variable FLOTILLA_UPDATE_REGISTRIES, which no setting has"
        ]
    );
}

#[test]
fn env_names_follow_the_keys() {
    let mut seen = BTreeSet::new();
    for s in SETTINGS {
        assert!(seen.insert(s.key), "{} is in the table twice", s.key);
        if let Some(name) = s.env_name() {
            let want = format!("FLOTILLA_{}", s.key.replace('.', "_").to_ascii_uppercase());
            assert_eq!(name, want, "the variable of {}", s.key);
        }
    }
    let file_only: Vec<&str> = SETTINGS
        .iter()
        .filter(|s| s.env_name().is_none())
        .map(|s| s.key)
        .collect();
    assert_eq!(
        file_only,
        ["update.registries", "backup.destinations", "backup.jobs"]
    );
    let env_only: Vec<&str> = SETTINGS
        .iter()
        .filter(|s| !s.in_file())
        .map(|s| s.key)
        .collect();
    assert_eq!(env_only, ["test_update_pause_at"]);
}

/// A value for `setting`'s variable other than its default, and the JSON it becomes.
fn sample(setting: &Setting, default: &serde_json::Value) -> (String, serde_json::Value) {
    use serde_json::json;
    match (setting.key, default) {
        (_, serde_json::Value::Bool(b)) => ((!b).to_string(), json!(!b)),
        (_, serde_json::Value::Number(n)) => {
            let n = n.as_u64().expect("whole-number settings") + 1;
            (n.to_string(), json!(n))
        }
        ("state_dir", _) => ("/srv/agent state".into(), json!("/srv/agent state")),
        ("relay_url", _) => (
            " https://relay.example.com ".into(),
            json!("https://relay.example.com"),
        ),
        ("ca_file", _) => ("/etc/flotilla/ca.pem".into(), json!("/etc/flotilla/ca.pem")),
        ("docker_host", _) => (" tcp://10.0.0.1:2375 ".into(), json!("tcp://10.0.0.1:2375")),
        ("allowed_commands", _) => (
            "ping, container.list,".into(),
            json!(["ping", "container.list"]),
        ),
        ("only_label", _) => (" a=b ".into(), json!("a=b")),
        ("disk_paths", _) => ("/a,,/b c".into(), json!(["/a", "/b c"])),
        ("relay_urls", _) => (
            "http://127.0.0.1:8701, https://relay-b.example.com/".into(),
            json!(["http://127.0.0.1:8701", "https://relay-b.example.com/"]),
        ),
        ("log_dir", _) => (" /srv/log ".into(), json!("/srv/log")),
        ("log_format", _) => ("JSON".into(), json!("json")),
        ("update.allowed_images", _) => (
            "ghcr.io, registry.example.com/team/".into(),
            json!(["ghcr.io", "registry.example.com/team/"]),
        ),
        ("update.docker_config", _) => (
            " /root/.docker/config.json ".into(),
            json!("/root/.docker/config.json"),
        ),
        ("backup.dir", _) => (" /srv/backups ".into(), json!("/srv/backups")),
        ("backup.schedule", _) => (" 30 1 * * * ".into(), json!("30 1 * * *")),
        ("backup.status_file", _) => (" /srv/status.json ".into(), json!("/srv/status.json")),
        ("backup.watch_status_file", _) => (" /opt/status.json ".into(), json!("/opt/status.json")),
        ("backup.age_recipients", _) => ("age1a, age1b".into(), json!(["age1a", "age1b"])),
        ("backup.age_recipients_file", _) => (" /etc/recipients ".into(), json!("/etc/recipients")),
        // --- compose (issue 17, part 1) ---
        ("compose.allowed_dirs", _) => (
            "/srv/stacks, /opt/apps".into(),
            json!(["/srv/stacks", "/opt/apps"]),
        ),
        ("compose.command", _) => ("docker compose".into(), json!("docker compose")),
        ("certificates.paths", _) => (
            "/etc/ssl/shop.pem, /srv/certs/*.crt".into(),
            json!(["/etc/ssl/shop.pem", "/srv/certs/*.crt"]),
        ),
        ("certificates.endpoints", _) => (
            "shop.example.com@127.0.0.1:443,127.0.0.1:8443".into(),
            json!(["shop.example.com@127.0.0.1:443", "127.0.0.1:8443"]),
        ),
        (key, _) => panic!("no sample value for {key}: add one here"),
    }
}

#[test]
fn every_env_variable_sets_its_key() {
    let defaults = serde_json::to_value(AgentConfig::default()).unwrap();
    let mut count = 0;
    for s in SETTINGS.iter().filter(|s| s.in_file()) {
        let Some(name) = s.env_name() else { continue };
        let pointer = format!("/{}", s.key.replace('.', "/"));
        let default = defaults.pointer(&pointer).expect("the key is a field");
        let (value, want) = sample(s, default);
        assert_ne!(*default, want, "{}: the sample is the default", s.key);
        let c = with_env(&[(name, &value)]).unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        let got = serde_json::to_value(&c).unwrap();
        assert_eq!(got.pointer(&pointer), Some(&want), "{name}={value}");
        // Nothing else changed.
        let mut rest = got.clone();
        *rest.pointer_mut(&pointer).unwrap() = default.clone();
        assert_eq!(rest, defaults, "{name} changed more than {}", s.key);
        // A blank variable is unset.
        assert_eq!(with_env(&[(name, " ")]).unwrap(), AgentConfig::default());
        // A value that parses as no type the table uses is refused, naming variable and value.
        let e = with_env(&[(name, "\u{1}bad")]);
        let text = matches!(
            s.ty,
            "String" | "Option<String>" | "PathBuf" | "Option<PathBuf>" | "Vec<String>"
        );
        if !text {
            let e = e.unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("\\u{1}bad"), "{e}");
        }
        count += 1;
    }
    assert_eq!(count, 50);
}

#[test]
fn certificate_endpoints_are_checked() {
    let c = AgentConfig::from_toml(
        "[certificates]\nendpoints = [\"shop.example.com@127.0.0.1:443\"]\ninterval_secs = 5\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.certificates.interval_secs, 5);
    let e = with_env(&[("FLOTILLA_CERTIFICATES_ENDPOINTS", "127.0.0.1")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("certificates.endpoints") && e.contains("FLOTILLA_CERTIFICATES_ENDPOINTS"),
        "{e}"
    );
    let e = with_env(&[("FLOTILLA_CERTIFICATES_INTERVAL_SECS", "0")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificates.interval_secs"), "{e}");
}

#[test]
fn the_update_pause_hook_is_set_only_by_its_variable() {
    let s = SETTINGS
        .iter()
        .find(|s| s.key == "test_update_pause_at")
        .unwrap();
    assert!(matches!(
        s.env,
        Env::Only {
            name: "FLOTILLA_TEST_UPDATE_PAUSE_AT",
            ..
        }
    ));
    let c = with_env(&[("FLOTILLA_TEST_UPDATE_PAUSE_AT", " old_stopped ")]).unwrap();
    assert_eq!(c.test_update_pause_at, Some(UpdatePhase::OldStopped));
    let e = with_env(&[("FLOTILLA_TEST_UPDATE_PAUSE_AT", "never")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FLOTILLA_TEST_UPDATE_PAUSE_AT") && e.contains("never"),
        "{e}"
    );
    let e = AgentConfig::from_toml("test_update_pause_at = \"old_stopped\"").unwrap_err();
    assert!(e.contains("test_update_pause_at"), "{e}");
}

#[test]
fn backup_settings_from_file_and_env() {
    let mut c = AgentConfig::from_toml(
        "[backup]\njitter_secs = 10\ncompression_level = 5\n[backup.retention]\ndaily = 2\n\
         weekly = 3\n",
    )
    .unwrap();
    c.apply_env(|k| match k {
        "FLOTILLA_BACKUP_RETENTION_DAILY" => Some("9".into()),
        "FLOTILLA_BACKUP_DUMP_TIMEOUT_SECS" => Some("60".into()),
        _ => None,
    })
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.backup.jitter_secs, 10); // file
    assert_eq!(c.backup.compression_level, 5); // file
    assert_eq!(c.backup.retention.daily, 9); // env beats file
    assert_eq!(c.backup.retention.weekly, 3); // file
    assert_eq!(c.backup.retention.monthly, 3); // default
    assert_eq!(c.backup.dump_timeout_secs, 60); // env
                                                // The backup checks name the key and its variable.
    let e = with_env(&[("FLOTILLA_BACKUP_COMPRESSION_LEVEL", "12")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backup.compression_level")
            && e.contains("FLOTILLA_BACKUP_COMPRESSION_LEVEL")
            && e.contains("12"),
        "{e}"
    );
    let e = with_env(&[("FLOTILLA_BACKUP_RETENTION_MONTHLY", "-1")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FLOTILLA_BACKUP_RETENTION_MONTHLY") && e.contains("-1"),
        "{e}"
    );
}

#[test]
fn rejected_values_name_the_key_and_its_variable() {
    for (name, value, key) in [
        ("FLOTILLA_MAX_OUTBOX_EVENTS", "99", "max_outbox_events"),
        ("FLOTILLA_MAX_FRAME_BYTES", "1024", "max_frame_bytes"),
        (
            "FLOTILLA_RESTART_LOOP_THRESHOLD",
            "1",
            "restart_loop_threshold",
        ),
        (
            "FLOTILLA_RESTART_LOOP_WINDOW_SECS",
            "0",
            "restart_loop_window_secs",
        ),
        ("FLOTILLA_LOG_KEEP_FILES", "0", "log_keep_files"),
        (
            "FLOTILLA_UPGRADE_DOWNLOAD_TIMEOUT_SECS",
            "9",
            "upgrade.download_timeout_secs",
        ),
        ("FLOTILLA_ONLY_LABEL", "novalue", "only_label"),
        ("FLOTILLA_RELAY_URL", "relay.example.com", "relay_url"),
        ("FLOTILLA_RELAY_URLS", "relay-b", "relay_urls"),
    ] {
        let e = with_env(&[(name, value)]).unwrap_err().to_string();
        assert!(
            e.contains(key) && e.contains(name) && e.contains(&format!("{value:?}")),
            "{e}"
        );
    }
    // The same check for a value from the file.
    let c = AgentConfig::from_toml("max_outbox_events = 5").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid max_outbox_events \"5\" (agent.toml or FLOTILLA_MAX_OUTBOX_EVENTS): \
         expected at least 100 events"
    );
    let c = AgentConfig::from_toml(
        "[[update.registries]]\nregistry = \"ghcr.io/x\"\nusername = \"u\"\n\
         password_file = \"/p\"\n",
    )
    .unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("update.registries.registry"), "{e}");
}

#[test]
fn relay_list_puts_relay_url_first_and_lists_each_relay_once() {
    let enrolled = "http://127.0.0.1:8700";
    let c = AgentConfig::default();
    assert_eq!(c.relay_list(enrolled), vec![enrolled.to_string()]);
    let c = AgentConfig::from_toml("relay_url = \"http://127.0.0.1:8800\"\n").unwrap();
    assert_eq!(
        c.relay_list(enrolled),
        vec!["http://127.0.0.1:8800".to_string()]
    );
    let c = AgentConfig::from_toml(
        "relay_url = \"http://127.0.0.1:8801\"\n\
         relay_urls = [\"http://127.0.0.1:8802\", \"http://127.0.0.1:8801/\"]\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.relay_list(enrolled),
        vec![
            "http://127.0.0.1:8801".to_string(),
            "http://127.0.0.1:8802".to_string()
        ]
    );
    // Without relay_url the list replaces the enrolled URL.
    let c = with_env(&[(
        "FLOTILLA_RELAY_URLS",
        "http://127.0.0.1:1, http://127.0.0.1:2",
    )])
    .unwrap();
    assert_eq!(
        c.relay_list(enrolled),
        vec![
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string()
        ]
    );
    let e = AgentConfig::from_toml("relay_urls = [\"ftp://x\"]\n")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("relay_urls") && e.contains("ftp://x"), "{e}");
}
