//! Unit tests of the relay's settings: precedence, errors that name the setting, and the
//! checks that keep `packaging/relay.toml` and the settings table in step.

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

use super::table::Setting;
use super::*;
use std::collections::{BTreeSet, HashMap};

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
    assert!(e.contains("FLOTILLA_HEARTBEAT_INTERVAL_SECS"), "{e}");
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

// === the settings table and packaging/relay.toml ===

/// What differs between `text` (a relay.toml) and [`SETTINGS`]; empty when they agree (the
/// daemons' shared check, `flotilla_daemon::settings::example::drift`).
fn drift(text: &str) -> Vec<String> {
    flotilla_daemon::settings::example::drift(text, "relay.toml", SETTINGS)
}

#[test]
fn relay_toml_and_the_settings_table_agree() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/relay.toml");
    let text = std::fs::read_to_string(&path).expect("packaging/relay.toml");
    let problems = drift(&text);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check sees drift in each direction.
    let renamed = text.replace(
        "Env: FLOTILLA_NOTIFY_MAX_ATTEMPTS",
        "Env: FLOTILLA_MAX_ATTEMPTS",
    );
    assert_eq!(
        drift(&renamed),
        [
            "relay.toml gives notify.max_attempts the Env: names {\"FLOTILLA_MAX_ATTEMPTS\"}, \
          the table {\"FLOTILLA_NOTIFY_MAX_ATTEMPTS\"}",
            "relay.toml names the variable FLOTILLA_MAX_ATTEMPTS, which no setting has"
        ]
    );
    let added = text.replace("[alerts]\n", "[alerts]\n# Soon.\n# sound = true\n");
    assert_eq!(
        drift(&added),
        ["alerts.sound is in relay.toml but not in the settings table"]
    );
    let removed = text.replace(
        "# tls_expiry: a certificate expiring in fewer days than this alerts.\n\
         # Env: FLOTILLA_ALERTS_TLS_WARN_DAYS.\ntls_warn_days = 14\n",
        "",
    );
    assert_eq!(
        drift(&removed),
        ["alerts.tls_warn_days is in the settings table but not in relay.toml"]
    );
    let promised = text.replace(
        "No environment\n# variable (a list of tables; ",
        "Env: FLOTILLA_NOTIFY_WEBHOOKS (",
    );
    assert_eq!(
        drift(&promised),
        [
            "relay.toml gives notify.webhooks the Env: names {\"FLOTILLA_NOTIFY_WEBHOOKS\"}, \
          the table {}",
            "relay.toml names the variable FLOTILLA_NOTIFY_WEBHOOKS, which no setting has"
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
        [
            "notify.webhooks",
            "notify.slack",
            "notify.email",
            "alerts.rules",
            "backup.destinations"
        ]
    );
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
        ("listen", _) => ("127.0.0.1:9999".into(), json!("127.0.0.1:9999")),
        ("data_dir", _) => ("/srv/relay data".into(), json!("/srv/relay data")),
        ("trusted_proxies", _) => ("10.0.0.1, ::1".into(), json!(["10.0.0.1", "::1"])),
        ("log_dir", _) => ("/srv/log".into(), json!("/srv/log")),
        ("database_url", _) => (
            "postgres://relay@db/flotilla".into(),
            json!("postgres://relay@db/flotilla"),
        ),
        ("database_password_file", _) => ("/etc/pw".into(), json!("/etc/pw")),
        ("log_format", _) => ("JSON".into(), json!("json")),
        ("alerts.public_url", _) => (
            " https://relay.example.com ".into(),
            json!("https://relay.example.com"),
        ),
        ("alerts.tls_endpoints", _) => (
            "a.example.com:443,,b.example.com:8443".into(),
            json!(["a.example.com:443", "b.example.com:8443"]),
        ),
        ("backup.dir", _) => ("/srv/backups".into(), json!("/srv/backups")),
        ("backup.pg_dump", _) => ("/opt/pg/pg_dump".into(), json!("/opt/pg/pg_dump")),
        ("backup.age_recipients", _) => ("age1a,age1b".into(), json!(["age1a", "age1b"])),
        ("backup.age_recipients_file", _) => ("/etc/r.txt".into(), json!("/etc/r.txt")),
        (key, _) => panic!("no sample value for {key}: add one here"),
    }
}

#[test]
fn every_env_variable_sets_its_key() {
    let defaults = serde_json::to_value(RelayConfig::default()).unwrap();
    let mut count = 0;
    for s in SETTINGS {
        let Some(name) = s.env_name() else { continue };
        let pointer = format!("/{}", s.key.replace('.', "/"));
        let default = defaults.pointer(&pointer).expect("the key is a field");
        let (value, want) = sample(s, default);
        assert_ne!(*default, want, "{}: the sample is the default", s.key);
        let c = RelayConfig::load(Overrides::from_env(&env(&[(name, &value)])).unwrap())
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        let got = serde_json::to_value(&c).unwrap();
        assert_eq!(got.pointer(&pointer), Some(&want), "{name}={value}");
        // Nothing else changed.
        let mut rest = got.clone();
        *rest.pointer_mut(&pointer).unwrap() = default.clone();
        assert_eq!(rest, defaults, "{name} changed more than {}", s.key);
        // A value that parses as no type the table uses is refused, naming variable and value.
        let e = Overrides::from_env(&env(&[(name, "\u{1}bad")]));
        if s.ty != "String"
            && s.ty != "PathBuf"
            && s.ty != "Option<PathBuf>"
            && s.ty != "Option<String>"
            && s.ty != "Vec<String>"
        {
            let e = e.unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("\\u{1}bad"), "{e}");
        }
        count += 1;
    }
    assert_eq!(count, 54);
}

#[test]
fn section_settings_from_env_file_and_flags() {
    let (path, _cleanup) = write_toml(
        "[notify]\nmax_attempts = 3\nqueue_capacity = 50\n[alerts]\ndisk_percent = 70\n\
         tls_endpoints = [\"a:443\"]\n",
    );
    let from_env = Overrides::from_env(&env(&[
        ("FLOTILLA_CONFIG", path.to_str().unwrap()),
        ("FLOTILLA_NOTIFY_QUEUE_CAPACITY", "60"),
        ("FLOTILLA_ALERTS_DISK_PERCENT", "75"),
        ("FLOTILLA_ALERTS_ENABLED", "no"),
        ("FLOTILLA_ALERTS_TLS_ENDPOINTS", "b:443, c:8443"),
    ]))
    .unwrap();
    let flags = Overrides {
        alerts: AlertsOverrides {
            disk_percent: Some(80),
            ..AlertsOverrides::default()
        },
        ..Overrides::default()
    };
    let c = RelayConfig::load(flags.over(from_env)).unwrap();
    assert_eq!(c.notify.max_attempts, 3); // file
    assert_eq!(c.notify.queue_capacity, 60); // env beats file
    assert_eq!(c.notify.max_backoff_secs, 300); // default
    assert_eq!(c.alerts.disk_percent, 80); // flag beats env
    assert!(!c.alerts.enabled); // env
    assert_eq!(c.alerts.tls_endpoints, ["b:443", "c:8443"]); // env replaces the file's list
    assert_eq!(c.alerts.memory_percent, 90); // default

    // Bad values name the variable and the value; out-of-range ones the key.
    for (name, value) in [
        ("FLOTILLA_NOTIFY_QUEUE_CAPACITY", "lots"),
        ("FLOTILLA_NOTIFY_MAX_ATTEMPTS", "-1"),
        ("FLOTILLA_ALERTS_ENABLED", "maybe"),
        ("FLOTILLA_ALERTS_DISK_PERCENT", "85%"),
        ("FLOTILLA_ALERTS_TLS_WARN_DAYS", "99999999999"),
    ] {
        let e = Overrides::from_env(&env(&[(name, value)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains(value), "{e}");
    }
    let e = RelayConfig::load(
        Overrides::from_env(&env(&[("FLOTILLA_ALERTS_DISK_PERCENT", "150")])).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alerts.disk_percent") && e.contains("150"),
        "{e}"
    );
    let e = RelayConfig::load(
        Overrides::from_env(&env(&[("FLOTILLA_ALERTS_TLS_ENDPOINTS", "a:443,nohost")])).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alerts.tls_endpoints") && e.contains("nohost"),
        "{e}"
    );
    // A blank variable is unset.
    let c = RelayConfig::load(
        Overrides::from_env(&env(&[("FLOTILLA_NOTIFY_MAX_ATTEMPTS", "  ")])).unwrap(),
    )
    .unwrap();
    assert_eq!(c.notify.max_attempts, 0);
}
