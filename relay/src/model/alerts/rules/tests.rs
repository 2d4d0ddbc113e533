use super::*;
use crate::model::alerts::rule::RULES;
use flotilla_shared::backup::{BackupRecord, BackupStatus};
use flotilla_shared::command::ContainerInfo;
use flotilla_shared::heartbeat::{DockerSnapshot, FilesystemUsage, HostMetrics};

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn container(name: &str, state: &str, health: Option<&str>) -> ContainerInfo {
    ContainerInfo {
        id: format!("{name}-id"),
        name: name.into(),
        image: "img".into(),
        image_id: "sha256:1".into(),
        state: state.into(),
        status: String::new(),
        health: health.map(str::to_string),
        restart_count: 0,
        oom_killed: false,
        exit_code: None,
        started_at: Some(t(0).to_rfc3339()),
        compose_project: None,
        compose_service: None,
        resources: None,
    }
}

fn heartbeat(at: DateTime<Utc>, containers: Vec<ContainerInfo>) -> Heartbeat {
    Heartbeat {
        at,
        agent_version: "1.0.0".into(),
        host: HostMetrics {
            memory_total_bytes: 100,
            memory_used_bytes: 50,
            filesystems: vec![FilesystemUsage::new(
                "/".into(),
                "sda".into(),
                "ext4".into(),
                100,
                50,
            )],
            ..HostMetrics::default()
        },
        docker: DockerSnapshot {
            containers,
            ..DockerSnapshot::default()
        },
        backup: None,
        compose_drift: Vec::new(),
    }
}

fn agent(id: &str, hb: Option<Heartbeat>) -> AgentView {
    AgentView {
        id: id.into(),
        name: format!("{id}-name"),
        labels: Labels::new(),
        revoked: false,
        connected: true,
        enrolled_at: t(-1000),
        heartbeat: hb.map(|h| {
            let at = h.at;
            (Arc::new(h), at)
        }),
        last_heartbeat_at: None,
        agent_version: "1.0.0".into(),
    }
}

fn event(kind: EventKind, name: &str, at: DateTime<Utc>, attrs: &[(&str, &str)]) -> AgentEvent {
    AgentEvent {
        kind,
        at,
        container_id: Some(format!("{name}-id")),
        container_name: Some(name.into()),
        message: format!("container {name} {}", kind.as_str()),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn rules_of(c: &[Condition]) -> Vec<(Rule, String)> {
    c.iter().map(|c| (c.rule, c.subject.clone())).collect()
}

#[test]
fn unreachable_after_three_intervals_and_not_before_relay_start() {
    let cfg = AlertsConfig::default();
    let mut a = agent("a", Some(heartbeat(t(0), vec![])));
    a.connected = false;
    let after = std::time::Duration::from_secs(180);
    assert!(
        agent_unreachable(&cfg, std::slice::from_ref(&a), after, t(-10_000), t(180)).is_empty()
    );
    let c = agent_unreachable(&cfg, std::slice::from_ref(&a), after, t(-10_000), t(181));
    assert_eq!(rules_of(&c), vec![(Rule::AgentUnreachable, "agent".into())]);
    assert_eq!(c[0].severity, Severity::Hard);
    // The relay started late: counted from its start.
    assert!(agent_unreachable(&cfg, std::slice::from_ref(&a), after, t(100), t(200)).is_empty());
    // Connected or revoked agents are never unreachable.
    let mut b = a.clone();
    b.connected = true;
    let mut r = a.clone();
    r.revoked = true;
    assert!(agent_unreachable(&cfg, &[b, r], after, t(-10_000), t(10_000)).is_empty());
    // No heartbeat at all: from enrollment.
    let mut n = agent("n", None);
    n.connected = false;
    assert_eq!(
        agent_unreachable(&cfg, &[n], after, t(-10_000), t(0)).len(),
        1
    );
}

#[test]
fn disk_and_memory_thresholds() {
    let mut cfg = AlertsConfig::default();
    let mut hb = heartbeat(t(0), vec![]);
    hb.host.filesystems.push(FilesystemUsage::new(
        "/data".into(),
        "sdb".into(),
        "ext4".into(),
        100,
        10,
    ));
    hb.host.memory_used_bytes = 95;
    let a = agent("a", Some(hb));
    let c = host_conditions(&cfg, &a, &FiringKeys::new());
    assert_eq!(
        rules_of(&c),
        vec![
            (Rule::DiskFull, "/data".into()),
            (Rule::MemoryHigh, "memory".into())
        ]
    );
    assert!(c[0].message.contains("90 %"), "{}", c[0].message);
    cfg.rules.insert(
        "disk_full".into(),
        super::super::config::RuleOverride {
            threshold: Some(95),
            severity: Some(Severity::Hard),
            enabled: None,
        },
    );
    cfg.memory_percent = 96;
    assert!(host_conditions(&cfg, &a, &FiringKeys::new()).is_empty());
    cfg.rules.get_mut("disk_full").unwrap().threshold = Some(89);
    let c = host_conditions(&cfg, &a, &FiringKeys::new());
    assert_eq!(c[0].severity, Severity::Hard);
}

#[test]
fn died_holds_until_a_later_heartbeat_shows_it_running() {
    let cfg = AlertsConfig::default();
    let none = HashSet::new();
    let died = event(
        EventKind::ContainerDied,
        "web",
        t(10),
        &[("exit_code", "1")],
    );
    // Heartbeat before the death: no evidence yet.
    let a = agent(
        "a",
        Some(heartbeat(t(5), vec![container("web", "running", None)])),
    );
    let c = container_conditions(
        &cfg,
        &a,
        std::slice::from_ref(&died),
        &StopIndex::default(),
        &none,
        t(20),
    );
    assert_eq!(rules_of(&c), vec![(Rule::ContainerDied, "web".into())]);
    assert_eq!(c[0].since, Some(t(10)));
    // Later heartbeat, still exited: holds.
    let a = agent(
        "a",
        Some(heartbeat(t(30), vec![container("web", "exited", None)])),
    );
    assert_eq!(
        container_conditions(
            &cfg,
            &a,
            std::slice::from_ref(&died),
            &StopIndex::default(),
            &none,
            t(40)
        )
        .len(),
        1
    );
    // Later heartbeat shows it running: clears once the hold is over (at once with a hold of
    // 0). Gone from a complete snapshot: clears.
    let a = agent(
        "a",
        Some(heartbeat(t(30), vec![container("web", "running", None)])),
    );
    let no_hold = AlertsConfig {
        event_hold_secs: 0,
        ..AlertsConfig::default()
    };
    let stops = StopIndex::default();
    let died_at = |cfg: &AlertsConfig, a: &AgentView, now| {
        container_conditions(cfg, a, std::slice::from_ref(&died), &stops, &none, now)
    };
    assert!(died_at(&no_hold, &a, t(40)).is_empty());
    assert_eq!(
        died_at(&cfg, &a, t(40)).len(),
        1,
        "held for event_hold_secs"
    );
    assert_eq!(died_at(&cfg, &a, t(10 + 599)).len(), 1);
    assert!(
        died_at(&cfg, &a, t(10 + 600)).is_empty(),
        "hold over, running"
    );
    let gone = agent("a", Some(heartbeat(t(30), vec![])));
    assert!(died_at(&no_hold, &gone, t(40)).is_empty());
    // Hold over but still not running: holds.
    let exited = agent(
        "a",
        Some(heartbeat(t(700), vec![container("web", "exited", None)])),
    );
    assert_eq!(died_at(&cfg, &exited, t(800)).len(), 1);
}

#[test]
fn restarted_deaths_and_ooms_hold_and_repeat_as_one_alert() {
    // A container OOM-killed every 5 minutes, restarted by its policy within seconds: the
    // alert holds through every heartbeat that shows it running, as one condition whose
    // message follows the latest event.
    let cfg = AlertsConfig::default();
    let none = HashSet::new();
    let stops = StopIndex::default();
    let mut events = Vec::new();
    for i in 0..4 {
        let mut e = event(EventKind::ContainerOom, "web", t(i * 300), &[]);
        e.message = format!("oom #{i}");
        events.push(e);
        let running = agent(
            "a",
            Some(heartbeat(
                t(i * 300 + 15),
                vec![container("web", "running", None)],
            )),
        );
        let c = container_conditions(&cfg, &running, &events, &stops, &none, t(i * 300 + 20));
        assert_eq!(
            rules_of(&c),
            vec![(Rule::ContainerOom, "web".into())],
            "{i}"
        );
        assert!(
            c[0].message.starts_with(&format!("oom #{i}")),
            "{}",
            c[0].message
        );
    }
    // Ten minutes after the last one, running: resolved.
    let running = agent(
        "a",
        Some(heartbeat(t(1500), vec![container("web", "running", None)])),
    );
    assert!(container_conditions(&cfg, &running, &events, &stops, &none, t(900 + 600)).is_empty());
}

#[test]
fn disk_and_memory_hysteresis() {
    let cfg = AlertsConfig::default(); // disk 85 %, memory 90 %, hysteresis 3
    let mut hb = heartbeat(t(0), vec![]);
    hb.host.filesystems = vec![FilesystemUsage::new(
        "/".into(),
        "sda".into(),
        "ext4".into(),
        1000,
        165,
    )];
    hb.host.memory_total_bytes = 1000;
    hb.host.memory_used_bytes = 880;
    let a = agent("a", Some(hb));
    // Below the thresholds and nothing firing: nothing.
    assert!(host_conditions(&cfg, &a, &FiringKeys::new()).is_empty());
    // Firing: 83.5 % and 88 % are within 3 points of the thresholds, so they hold.
    let firing: FiringKeys = [
        ("a".to_string(), "disk_full".to_string(), "/".to_string()),
        (
            "a".to_string(),
            "memory_high".to_string(),
            "memory".to_string(),
        ),
    ]
    .into();
    assert_eq!(
        rules_of(&host_conditions(&cfg, &a, &firing)),
        vec![
            (Rule::DiskFull, "/".into()),
            (Rule::MemoryHigh, "memory".into())
        ]
    );
    // Another agent's firing keys do not count.
    let b = AgentView {
        id: "b".into(),
        ..a.clone()
    };
    assert!(host_conditions(&cfg, &b, &firing).is_empty());
    // 3 points or more below: resolves.
    let mut hb = heartbeat(t(0), vec![]);
    hb.host.filesystems = vec![FilesystemUsage::new(
        "/".into(),
        "sda".into(),
        "ext4".into(),
        1000,
        180,
    )];
    hb.host.memory_total_bytes = 1000;
    hb.host.memory_used_bytes = 870;
    let low = agent("a", Some(hb));
    assert!(host_conditions(&cfg, &low, &firing).is_empty());
}

#[test]
fn stop_index_matches_name_id_and_short_id_of_the_same_agent() {
    let cfg = AlertsConfig::default();
    let none = HashSet::new();
    let a = agent(
        "a",
        Some(heartbeat(t(5), vec![container("web", "exited", None)])),
    );
    let mut e = event(
        EventKind::ContainerDied,
        "web",
        t(10),
        &[("exit_code", "137")],
    );
    let full_id = "0123456789abcdef0123456789abcdef".to_string();
    e.container_id = Some(full_id.clone());
    let stop = |agent: &str, container: &str| RequestedStop {
        agent_id: agent.into(),
        container: container.into(),
        from: t(0),
        until: Some(t(11)),
    };
    for (what, s, wanted) in [
        ("name", stop("a", "web"), true),
        ("full id", stop("a", &full_id), true),
        ("short id", stop("a", &full_id[..12]), true),
        ("too short a prefix", stop("a", &full_id[..8]), false),
        ("other agent", stop("b", "web"), false),
        ("other container", stop("a", "db"), false),
        (
            "window long over",
            RequestedStop {
                until: Some(t(-100)),
                from: t(-200),
                ..stop("a", "web")
            },
            false,
        ),
    ] {
        let c = container_conditions(
            &cfg,
            &a,
            std::slice::from_ref(&e),
            &StopIndex::new([s]),
            &none,
            t(20),
        );
        assert_eq!(c.is_empty(), wanted, "{what}");
    }
}

#[test]
fn messages_are_capped_on_a_char_boundary() {
    assert_eq!(cap_message("short".into()), "short");
    let exact = "é".repeat(MAX_MESSAGE_CHARS);
    assert_eq!(cap_message(exact.clone()), exact);
    let long = "é".repeat(MAX_MESSAGE_CHARS + 5);
    let capped = cap_message(long);
    assert_eq!(capped.chars().count(), MAX_MESSAGE_CHARS);
    assert!(capped.ends_with('…'));
    // Every rule's conditions go through it.
    let cfg = AlertsConfig::default();
    let mut e = event(EventKind::ContainerOom, "web", t(10), &[]);
    e.message = "x".repeat(5000);
    let a = agent("a", Some(heartbeat(t(5), vec![])));
    let c = container_conditions(
        &cfg,
        &a,
        &[e],
        &StopIndex::default(),
        &HashSet::new(),
        t(20),
    );
    assert_eq!(c[0].message.chars().count(), MAX_MESSAGE_CHARS);
}

#[test]
fn wanted_stops_updates_and_clean_exits_do_not_alert() {
    let cfg = AlertsConfig::default();
    let none = HashSet::new();
    let a = agent(
        "a",
        Some(heartbeat(t(5), vec![container("web", "exited", None)])),
    );
    for code in ["0", "143"] {
        let e = event(
            EventKind::ContainerDied,
            "web",
            t(10),
            &[("exit_code", code)],
        );
        assert!(
            container_conditions(&cfg, &a, &[e], &StopIndex::default(), &none, t(20)).is_empty(),
            "{code}"
        );
    }
    // SIGKILL after a stop's timeout, during a relay-requested stop.
    let e = event(
        EventKind::ContainerDied,
        "web",
        t(10),
        &[("exit_code", "137")],
    );
    let stop = RequestedStop {
        agent_id: "a".into(),
        container: "web".into(),
        from: t(0),
        until: Some(t(11)),
    };
    assert!(container_conditions(
        &cfg,
        &a,
        std::slice::from_ref(&e),
        &StopIndex::new([stop.clone()]),
        &none,
        t(20)
    )
    .is_empty());
    let other_agent = RequestedStop {
        agent_id: "b".into(),
        ..stop
    };
    assert_eq!(
        container_conditions(
            &cfg,
            &a,
            std::slice::from_ref(&e),
            &StopIndex::new([other_agent]),
            &none,
            t(20)
        )
        .len(),
        1
    );
    // An event raised during an update, or a container an update acts on.
    let u = event(
        EventKind::ContainerDied,
        "web",
        t(10),
        &[("exit_code", "1"), ("updating", "cmd_1")],
    );
    assert!(container_conditions(&cfg, &a, &[u], &StopIndex::default(), &none, t(20)).is_empty());
    let updating: HashSet<String> = ["web".to_string()].into();
    let unhealthy = agent(
        "a",
        Some(heartbeat(
            t(5),
            vec![container("web", "running", Some("unhealthy"))],
        )),
    );
    assert!(container_conditions(
        &cfg,
        &unhealthy,
        std::slice::from_ref(&e),
        &StopIndex::default(),
        &updating,
        t(20)
    )
    .is_empty());
    assert_eq!(
        rules_of(&container_conditions(
            &cfg,
            &unhealthy,
            &[],
            &StopIndex::default(),
            &none,
            t(20)
        )),
        vec![(Rule::ContainerUnhealthy, "web".into())]
    );
    // A later clean exit supersedes an older crash.
    let clean = event(
        EventKind::ContainerDied,
        "web",
        t(12),
        &[("exit_code", "0")],
    );
    assert!(
        container_conditions(&cfg, &a, &[e, clean], &StopIndex::default(), &none, t(20)).is_empty()
    );
}

#[test]
fn oom_and_restart_loop() {
    let cfg = AlertsConfig::default();
    let none = HashSet::new();
    let a = agent(
        "a",
        Some(heartbeat(t(5), vec![container("web", "restarting", None)])),
    );
    let oom = event(EventKind::ContainerOom, "web", t(10), &[]);
    let died = event(
        EventKind::ContainerDied,
        "web",
        t(10),
        &[("exit_code", "137")],
    );
    let c = container_conditions(&cfg, &a, &[oom, died], &StopIndex::default(), &none, t(20));
    assert_eq!(
        rules_of(&c),
        vec![
            (Rule::ContainerRestartLoop, "web".into()),
            (Rule::ContainerOom, "web".into())
        ]
    );
    // A restart-loop event alone, running but only just started: holds; old: gone.
    let mut stable = container("web", "running", None);
    stable.started_at = Some(t(-100).to_rfc3339());
    let a = agent("a", Some(heartbeat(t(30), vec![stable])));
    let mut started = container("web", "running", None);
    started.started_at = Some(t(25).to_rfc3339());
    let b = agent("a", Some(heartbeat(t(30), vec![started])));
    let l = event(EventKind::ContainerRestartLoop, "web", t(20), &[]);
    assert_eq!(
        container_conditions(
            &cfg,
            &b,
            std::slice::from_ref(&l),
            &StopIndex::default(),
            &none,
            t(40)
        )
        .len(),
        1
    );
    assert!(container_conditions(
        &cfg,
        &a,
        std::slice::from_ref(&l),
        &StopIndex::default(),
        &none,
        t(40)
    )
    .is_empty());
    assert!(
        container_conditions(&cfg, &b, &[l], &StopIndex::default(), &none, t(20 + 601)).is_empty()
    );
}

#[test]
fn backups_failed_stale_and_all() {
    let cfg = AlertsConfig::default();
    let db = |agent: &str, key: &str, state: DatabaseState| DatabaseBackupState {
        agent_id: agent.into(),
        agent_name: agent.into(),
        key: key.into(),
        state,
        latest: BackupRecord {
            agent_id: agent.into(),
            run_id: "r".into(),
            source: "agent".into(),
            job: None,
            key: key.into(),
            container: None,
            database: None,
            engine: None,
            status: BackupStatus::Failed,
            error: Some("dump failed".into()),
            backup_id: None,
            size_bytes: None,
            started_at: t(0),
            finished_at: t(1),
        },
        last_success_at: None,
    };
    let c = backup_conditions(
        &cfg,
        &[
            db("a", "pg/app", DatabaseState::Failed),
            db("a", "pg/other", DatabaseState::Ok),
            db("b", "pg/app", DatabaseState::Stale),
        ],
        false,
    );
    // Truncated: the last agent may be missing databases, so no backups_all_failed for it.
    let truncated = backup_conditions(
        &cfg,
        &[
            db("a", "pg/app", DatabaseState::Failed),
            db("b", "pg/app", DatabaseState::Stale),
        ],
        true,
    );
    assert!(truncated
        .iter()
        .all(|c| !(c.rule == Rule::BackupsAllFailed && c.agent_id.as_deref() == Some("b"))));
    assert!(truncated
        .iter()
        .any(|c| c.rule == Rule::BackupsAllFailed && c.agent_id.as_deref() == Some("a")));
    let mut got = rules_of(&c);
    got.sort();
    assert_eq!(
        got,
        vec![
            (Rule::BackupFailed, "pg/app".into()),
            (Rule::BackupStale, "pg/app".into()),
            (Rule::BackupsAllFailed, "backups".into()),
        ]
    );
    assert!(c.iter().any(|c| c.message.contains("dump failed")));
    let all = c.iter().find(|c| c.rule == Rule::BackupsAllFailed).unwrap();
    assert_eq!(all.agent_id.as_deref(), Some("b"));
    assert_eq!(all.severity, Severity::Hard);
}

#[test]
fn rolled_back_until_a_later_success_or_the_window_ends() {
    let cfg = AlertsConfig::default();
    let u = |secs, outcome| FinishedUpdate {
        agent_id: "a".into(),
        container: "web".into(),
        command_id: format!("cmd_{secs}"),
        outcome: Some(outcome),
        finished_at: t(secs),
        error: None,
    };
    let none = HashMap::new();
    let c = update_conditions(&cfg, &[u(0, UpdateOutcome::RolledBack)], &none, t(10));
    assert_eq!(rules_of(&c), vec![(Rule::UpdateRolledBack, "web".into())]);
    let c = update_conditions(&cfg, &[u(0, UpdateOutcome::RollbackFailed)], &none, t(10));
    assert_eq!(c[0].severity, Severity::Hard);
    let later = [
        u(0, UpdateOutcome::RolledBack),
        u(5, UpdateOutcome::Updated),
    ];
    assert!(update_conditions(&cfg, &later, &none, t(10)).is_empty());
    assert!(update_conditions(
        &cfg,
        &[u(0, UpdateOutcome::RolledBack)],
        &none,
        t(24 * 3600 + 1)
    )
    .is_empty());
    let updating: HashMap<String, HashSet<String>> =
        [("a".to_string(), ["web".to_string()].into())].into();
    assert!(
        update_conditions(&cfg, &[u(0, UpdateOutcome::RolledBack)], &updating, t(10)).is_empty()
    );
}

#[test]
fn rollouts_paused_and_aborted() {
    let cfg = AlertsConfig::default();
    let r = |id: &str, state: &str, at| RolloutView {
        id: id.into(),
        state: state.into(),
        reason: Some("canary failed".into()),
        updated_at: at,
    };
    let c = rollout_conditions(
        &cfg,
        &[
            r("ro_1", "paused", t(0)),
            r("ro_2", "aborted", t(0)),
            r("ro_3", "completed", t(0)),
        ],
        t(100),
    );
    assert_eq!(
        rules_of(&c),
        vec![
            (Rule::RolloutPaused, "ro_1".into()),
            (Rule::RolloutAborted, "ro_2".into())
        ]
    );
    assert!(c[0].agent_id.is_none());
    let c = rollout_conditions(&cfg, &[r("ro_2", "aborted", t(0))], t(25 * 3600));
    assert!(c.is_empty());
}

#[test]
fn version_skew_against_the_newest_connected() {
    let cfg = AlertsConfig::default();
    assert!(compare_versions("1.10.0", "1.9.3").is_gt());
    assert!(compare_versions("1.2.0-rc1", "1.2.0").is_lt());
    assert!(compare_versions("0.1.0", "0.1.0").is_eq());
    let mut old = agent("old", None);
    old.agent_version = "1.9.0".into();
    let mut new = agent("new", None);
    new.agent_version = "1.10.0".into();
    let mut offline_newer = agent("x", None);
    offline_newer.agent_version = "2.0.0".into();
    offline_newer.connected = false;
    let c = version_skew(&cfg, &[old, new, offline_newer]);
    let mut got: Vec<_> = c.iter().map(|c| c.agent_id.clone().unwrap()).collect();
    got.sort();
    assert_eq!(got, vec!["old".to_string(), "x".to_string()]);
    assert_eq!(c[0].severity, Severity::Soft);
}

#[test]
fn tls_thresholds() {
    let cfg = AlertsConfig::default();
    let check = |days: i64| TlsCheck {
        endpoint: "example.com:443".into(),
        checked_at: t(0),
        result: Ok(t(0) + Duration::days(days)),
    };
    assert!(tls_conditions(&cfg, &[check(30)], t(0)).is_empty());
    assert_eq!(tls_conditions(&cfg, &[check(13)], t(0)).len(), 1);
    assert!(tls_conditions(&cfg, &[check(-1)], t(0))[0]
        .message
        .contains("expired"));
}

#[test]
fn config_overrides_and_validation() {
    let mut cfg = AlertsConfig::default();
    assert_eq!(cfg.severity(Rule::AgentVersionSkew), Severity::Soft);
    cfg.rules.insert(
        "agent_version_skew".into(),
        super::super::config::RuleOverride {
            enabled: Some(false),
            severity: Some(Severity::Medium),
            threshold: None,
        },
    );
    assert!(!cfg.enabled(Rule::AgentVersionSkew));
    assert_eq!(cfg.severity(Rule::AgentVersionSkew), Severity::Medium);
    assert!(cfg.validate().is_ok());
    cfg.rules.insert("disk_ful".into(), Default::default());
    let (key, _, _) = cfg.validate().unwrap_err();
    assert_eq!(key, "alerts.rules.disk_ful");
    let bad = AlertsConfig {
        tls_endpoints: vec!["nohost".into()],
        ..AlertsConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "alerts.tls_endpoints");
}

#[test]
fn every_alerts_setting_is_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/relay.toml");
    let text = std::fs::read_to_string(&path).expect("packaging/relay.toml");
    let section = text
        .split("\n[alerts]\n")
        .nth(1)
        .expect("an [alerts] section");
    let defaults = serde_json::to_value(AlertsConfig::default()).unwrap();
    for key in defaults.as_object().unwrap().keys() {
        assert!(
            section.contains(&format!("\n{key} = "))
                || section.contains(&format!("\n# [alerts.{key}.")),
            "alerts.{key} is not documented in packaging/relay.toml"
        );
    }
    for rule in RULES {
        assert!(
            section.contains(rule.as_str()),
            "rule {} is not documented",
            rule.as_str()
        );
    }
}

#[test]
fn reverted_upgrades_alert_for_the_agent_that_marked_the_build() {
    use flotilla_shared::release::{BrokenInfo, ReleaseInfo};
    let cfg = AlertsConfig::default();
    let release = |version: &str, by: Option<(&str, DateTime<Utc>)>| ReleaseInfo {
        version: version.into(),
        arch: "x86_64".into(),
        size: 1,
        sha256: "a".repeat(64),
        created_at: t(0),
        published_by: "admin".into(),
        broken: by.map(|(by, at)| BrokenInfo {
            at,
            reason: "the agent did not reach the relay".into(),
            by: by.into(),
        }),
    };
    let agents = vec![agent("ag_1", None)];
    let releases = vec![
        release("0.3.0", Some(("ag_1", t(100)))),
        // Marked by an operator (a token name, not an agent): no alert.
        release("0.4.0", Some(("admin", t(100)))),
        release("0.2.0", None),
    ];
    let c = upgrade_reverted_conditions(&cfg, &releases, &agents, t(200));
    assert_eq!(
        rules_of(&c),
        vec![(Rule::AgentUpgradeReverted, "0.3.0/x86_64".into())]
    );
    assert_eq!(c[0].agent_id.as_deref(), Some("ag_1"));
    assert_eq!(c[0].severity, Severity::Medium);
    assert!(c[0].message.contains("reverted"), "{}", c[0].message);
    // Gone after update_alert_hours.
    let late = t(100) + Duration::hours(i64::from(cfg.update_alert_hours)) + Duration::seconds(1);
    assert!(upgrade_reverted_conditions(&cfg, &releases, &agents, late).is_empty());
}
