use super::*;
use flotilla_shared::api::{
    AgentFacts, AgentStatus, DeliveryState, JobCounts, JobState, JobTarget, MetricsSummary,
};
use flotilla_shared::command::{Command, ErrorInfo, ResultStatus};
use flotilla_shared::heartbeat::{
    AgentEvent, DockerSnapshot, EventKind, FilesystemUsage, HostMetrics,
};
use flotilla_shared::selector::parse_labels;
use serde_json::json;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn now() -> DateTime<Utc> {
    at("2026-03-01T12:00:00Z")
}

fn container(name: &str, state: &str, health: Option<&str>) -> ContainerInfo {
    ContainerInfo {
        id: format!("{name}0123456789abcdef"),
        name: name.into(),
        image: "flotilla-testapp:v1".into(),
        image_id: "sha256:49115dfa4e6f0000000000000000".into(),
        state: state.into(),
        status: "Up 5 minutes".into(),
        health: health.map(String::from),
        restart_count: 2,
        oom_killed: name == "db",
        exit_code: (state == "exited").then_some(137),
        started_at: None,
        compose_project: Some("shop".into()),
        compose_service: Some(name.into()),
        resources: None,
    }
}

fn agent(id: &str, name: &str, summary: Option<MetricsSummary>) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        name: name.into(),
        labels: parse_labels("region=eu,tier=build").unwrap(),
        status: AgentStatus::Online,
        enrolled_at: at("2026-03-01T10:00:00Z"),
        last_heartbeat_at: Some(at("2026-03-01T11:59:55Z")),
        connected_at: Some(at("2026-03-01T11:00:00Z")),
        agent_version: "0.1.0".into(),
        facts: AgentFacts {
            hostname: "build-1".into(),
            os: "Debian 12".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
        },
        summary,
    }
}

fn heartbeat_sample() -> Heartbeat {
    Heartbeat {
        at: at("2026-03-01T11:59:55Z"),
        agent_version: "0.1.0".into(),
        host: HostMetrics {
            hostname: "build-1".into(),
            os: "Debian 12".into(),
            kernel: "6.1.0".into(),
            arch: "x86_64".into(),
            uptime_secs: 3 * 86_400 + 4 * 3600 + 5,
            cpu_count: 2,
            cpu_percent: 12.5,
            load_1: 0.5,
            load_5: 0.25,
            load_15: 0.125,
            memory_total_bytes: 24 * 1024 * 1024 * 1024,
            memory_used_bytes: 6 * 1024 * 1024 * 1024,
            swap_total_bytes: 1024 * 1024 * 1024,
            swap_used_bytes: 0,
            filesystems: vec![
                FilesystemUsage::new(
                    "/".into(),
                    "/dev/sda1".into(),
                    "ext4".into(),
                    100 << 30,
                    25 << 30,
                ),
                FilesystemUsage::new(
                    "/var/lib/docker".into(),
                    "/dev/sdb1".into(),
                    "xfs".into(),
                    200 << 30,
                    190 << 30,
                ),
            ],
            ..HostMetrics::default()
        },
        docker: DockerSnapshot {
            version: Some("20.10.24".into()),
            api_version: Some("1.41".into()),
            error: None,
            containers_omitted: 0,
            containers: vec![
                container("web", "running", Some("healthy")),
                container("db", "exited", None),
            ],
        },
        backup: None,
        compose_drift: Vec::new(),
    }
}

#[test]
fn tables_align_columns_without_trailing_spaces() {
    let mut t = Table::new(&["A", "LONG HEADER", "C"]);
    t.row(vec!["wide cell".into(), "x".into(), "".into()]);
    t.row(vec!["é".into(), "yy".into(), "z".into()]);
    assert_eq!(
        t.render(),
        "A          LONG HEADER  C\n\
         wide cell  x\n\
         é          yy           z\n"
    );
}

#[test]
fn helpers() {
    assert_eq!(ago(at("2026-03-01T11:59:55Z"), now()), "5s ago");
    assert_eq!(ago(at("2026-03-01T13:00:00Z"), now()), "in 1h");
    assert_eq!(ago(at("2026-02-27T12:00:00Z"), now()), "2d ago");
    assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    assert_eq!(uptime(125), "2m 5s");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(24 << 30), "24.0 GiB");
    assert_eq!(short_id("sha256:49115dfa4e6f0000"), "49115dfa4e6f");
    assert_eq!(short_id("abc"), "abc");
    assert_eq!(labels(&Labels::new()), "-");
}

#[test]
fn agents_table() {
    let hb = heartbeat_sample();
    let mut unhealthy = MetricsSummary::of(&hb);
    unhealthy.containers_unhealthy = 1;
    let mut offline = agent("ag_2", "build-2", None);
    offline.status = AgentStatus::Offline;
    offline.last_heartbeat_at = None;
    let text = agents(&[agent("ag_1", "build-1", Some(unhealthy)), offline], now());
    assert_eq!(
        text,
        "ID    NAME     STATUS   LAST HEARTBEAT  VERSION  LABELS                CPU    MEM  DISK  CONTAINERS\n\
         ag_1  build-1  online   5s ago          0.1.0    region=eu,tier=build  12.5%  25%  75%   1/2 (1 unhealthy)\n\
         ag_2  build-2  offline  never           0.1.0    region=eu,tier=build  -      -    -     -\n"
    );
}

#[test]
fn agent_show_prints_every_heartbeat_fact() {
    let detail = AgentDetail {
        claimed_labels: Default::default(),
        agent: agent("ag_1", "build-1", None),
        heartbeat: Some(heartbeat_sample()),
    };
    let text = agent_detail(&detail, now());
    for needle in [
        "agent ag_1 (build-1)",
        "online, connected 1h ago",
        "region=eu,tier=build",
        "uptime:    3d 4h",
        "cpu:       12.5% of 2 cpus",
        "load:      0.50 0.25 0.12",
        "memory:    6.0 GiB of 24.0 GiB used (25.0%)",
        "swap:      0 B of 1.0 GiB used",
        "/var/lib/docker  /dev/sdb1  xfs   200.0 GiB  190.0 GiB  5.0%",
        "/                /dev/sda1  ext4  100.0 GiB  25.0 GiB   75.0%",
        "docker: 20.10.24 (api 1.41)",
        "containers (2):",
        "web   flotilla-testapp:v1  49115dfa4e6f  running  healthy  2         no   -     shop/web  Up 5 minutes",
        "db    flotilla-testapp:v1  49115dfa4e6f  exited   -        2         yes  137   shop/db   Up 5 minutes",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let no_hb = AgentDetail {
        claimed_labels: Default::default(),
        agent: agent("ag_1", "build-1", None),
        heartbeat: None,
    };
    assert!(agent_detail(&no_hb, now()).contains("no heartbeat received yet"));
    assert!(!text.contains("certificates:"), "none read, none shown");
}

#[test]
fn agent_show_lists_host_certificates() {
    use flotilla_shared::heartbeat::{CertificateSourceKind, HostCertificate};
    let mut hb = heartbeat_sample();
    let cert = |source: &str| HostCertificate {
        kind: CertificateSourceKind::File,
        source: source.into(),
        subject: Some("shop.example.com".into()),
        sans: vec!["shop.example.com".into(), "*.shop.example.com".into()],
        issuer: Some("R11".into()),
        not_after: Some(now() + chrono::Duration::days(5)),
        warning: None,
        checked_at: now(),
    };
    hb.host.certificates = vec![
        cert("/etc/letsencrypt/live/shop/fullchain.pem"),
        HostCertificate {
            subject: None,
            sans: vec![],
            issuer: None,
            not_after: None,
            warning: Some("no certificate in the file".into()),
            ..cert("/srv/certs/garbage.pem")
        },
    ];
    let text = agent_detail(
        &AgentDetail {
            claimed_labels: Default::default(),
            agent: agent("ag_1", "build-1", None),
            heartbeat: Some(hb),
        },
        now(),
    );
    for needle in [
        "certificates:",
        "/etc/letsencrypt/live/shop/fullchain.pem  shop.example.com (+1 names)",
        "R11     2026-03-06T12:00:00Z (in 5d",
        "/srv/certs/garbage.pem                    unreadable: no certificate in the file  -",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

fn result(
    status: ResultStatus,
    output: Option<serde_json::Value>,
    error: Option<(&str, &str)>,
) -> CommandResult {
    CommandResult {
        command_id: "cmd_1".into(),
        status,
        output,
        error: error.map(|(code, message)| ErrorInfo {
            code: code.into(),
            message: message.into(),
        }),
        started_at: at("2026-03-01T11:59:58Z"),
        finished_at: at("2026-03-01T11:59:59Z"),
    }
}

#[test]
fn command_results_by_kind() {
    let list =
        json!({"containers": [serde_json::to_value(container("web", "running", None)).unwrap()]});
    let text = command_result(
        CommandKind::ContainerList,
        &result(ResultStatus::Succeeded, Some(list), None),
    );
    assert_eq!(
        text,
        "NAME  ID            IMAGE                STATE    HEALTH  RESTARTS  STATUS\n\
         web   web012345678  flotilla-testapp:v1  running  -       2         Up 5 minutes\n"
    );
    let logs = json!({"container": "web", "lines": ["testapp line 1", "testapp line 2"], "truncated": true});
    let text = command_result(
        CommandKind::ContainerLogs,
        &result(ResultStatus::Succeeded, Some(logs), None),
    );
    assert!(
        text.starts_with("testapp line 1\ntestapp line 2\n(older lines"),
        "{text}"
    );
    let text = command_result(
        CommandKind::ContainerStart,
        &result(
            ResultStatus::Failed,
            None,
            Some(("no_such_container", "no such container: nope")),
        ),
    );
    assert_eq!(
        text,
        "  error: no such container: nope (no_such_container)\n"
    );
    let inspect = json!({"Id": "abc"});
    let text = command_result(
        CommandKind::ContainerInspect,
        &result(ResultStatus::Succeeded, Some(inspect), None),
    );
    assert_eq!(text, "{\n  \"Id\": \"abc\"\n}\n");
}

#[test]
fn command_info_header() {
    let info = CommandInfo {
        id: "cmd_1".into(),
        agent_id: "ag_1".into(),
        kind: CommandKind::Ping,
        command: Command::from_parts("ping", serde_json::Value::Null).unwrap(),
        state: DeliveryState::Succeeded,
        created_at: at("2026-03-01T11:59:50Z"),
        expires_at: at("2026-03-01T12:09:50Z"),
        created_by: "admin".into(),
        job_id: None,
        result: Some(result(
            ResultStatus::Succeeded,
            Some(json!({"agent_version": "0.1.0", "hostname": "build-1"})),
            None,
        )),
    };
    assert_eq!(
        command_info(&info, now()),
        "command cmd_1 (ping) on agent ag_1: succeeded\n  created 10s ago by admin, expires in 9m\npong from build-1 (agent 0.1.0)\n"
    );
}

#[test]
fn job_table_and_outputs() {
    let job = JobInfo {
        id: "job_1".into(),
        command_id: "cmd_9".into(),
        selector: "tier=build".parse().unwrap(),
        kind: CommandKind::ContainerLogs,
        command: Command::from_parts("container.logs", json!({"container": "web"})).unwrap(),
        state: JobState::Stopped,
        max_concurrency: 1,
        max_errors: Some(0),
        created_at: at("2026-03-01T11:59:00Z"),
        expires_at: at("2026-03-01T12:09:00Z"),
        created_by: "admin".into(),
        counts: JobCounts {
            targets: 3,
            succeeded: 1,
            failed: 1,
            skipped: 1,
            ..Default::default()
        },
        targets: vec![
            JobTarget {
                agent_id: "ag_1".into(),
                agent_name: "build-1".into(),
                state: DeliveryState::Succeeded,
                result: Some(result(
                    ResultStatus::Succeeded,
                    Some(json!({"container": "web", "lines": ["hello"], "truncated": false})),
                    None,
                )),
            },
            JobTarget {
                agent_id: "ag_2".into(),
                agent_name: "build-2".into(),
                state: DeliveryState::Failed,
                result: Some(result(
                    ResultStatus::Failed,
                    None,
                    Some(("no_such_container", "no such container: web")),
                )),
            },
            JobTarget {
                agent_id: "ag_3".into(),
                agent_name: "build-3".into(),
                state: DeliveryState::Skipped,
                result: None,
            },
        ],
    };
    let text = job_info(&job, now());
    assert!(text.starts_with(
        "job job_1 (container.logs to tier=build): stopped (max errors exceeded)\n  3 targets: 1 succeeded, 1 failed"
    ), "{text}");
    assert!(
        text.ends_with(
            "AGENT  NAME     STATE      ERROR\n\
         ag_1   build-1  succeeded  -\n\
         ag_2   build-2  failed     no such container: web (no_such_container)\n\
         ag_3   build-3  skipped    -\n"
        ),
        "{text}"
    );
    assert_eq!(job_outputs(&job), "\n== build-1 (ag_1) ==\nhello\n");
}

#[test]
fn events_table() {
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("exit_code".to_string(), "137".to_string());
    let list = vec![EventRecord {
        id: 7,
        agent_id: "ag_1".into(),
        received_at: now(),
        event: AgentEvent {
            kind: EventKind::ContainerDied,
            at: at("2026-03-01T11:58:00Z"),
            container_id: Some("abc".into()),
            container_name: Some("web".into()),
            message: "container web died with exit code 137".into(),
            attributes,
        },
    }];
    assert_eq!(
        events(&list),
        "ID  TIME                  KIND            CONTAINER  MESSAGE                                ATTRIBUTES\n\
         7   2026-03-01T11:58:00Z  container.died  web        container web died with exit code 137  exit_code=137\n"
    );
}

#[test]
fn tokens() {
    let info = EnrollmentTokenInfo {
        id: "et_1".into(),
        labels: parse_labels("region=eu").unwrap(),
        created_at: at("2026-03-01T11:00:00Z"),
        expires_at: at("2026-03-01T13:00:00Z"),
        max_uses: 1,
        uses: 0,
        revoked: false,
        note: None,
        created_by: "admin".into(),
        agent_label_keys: Vec::new(),
    };
    let created = EnrollmentTokenCreated {
        token: "fet_secret".into(),
        info: info.clone(),
    };
    let text = enrollment_token_created(&created, "http://127.0.0.1:8700", now());
    assert!(
        text.starts_with("enrollment token (shown only now): fet_secret\n"),
        "{text}"
    );
    assert!(
        text.contains("--relay http://127.0.0.1:8700 --token fet_secret"),
        "{text}"
    );
    let mut expired = info.clone();
    expired.expires_at = at("2026-03-01T11:30:00Z");
    let text = enrollment_tokens(&[info, expired], now());
    assert_eq!(
        text,
        "ID    LABELS     CREATED  EXPIRES          USES  REVOKED  CREATED BY  NOTE\n\
         et_1  region=eu  1h ago   in 1h            0/1   no       admin       -\n\
         et_1  region=eu  1h ago   expired 30m ago  0/1   no       admin       -\n"
    );
}

// === updates ===

fn rolled_back() -> UpdateReport {
    serde_json::from_value(json!({
        "outcome": "rolled_back", "container": "web", "image": "reg.example/app:v2",
        "strategy": "stop-first", "health": "http:8080/healthz",
        "old_container_id": "0123456789abcdef0123", "old_image": "reg.example/app:v1",
        "old_image_id": "sha256:1111111111111111aaaa",
        "old_image_digest": "reg.example/app@sha256:1111",
        "new_container_id": "fedcba9876543210fedc", "new_image_id": "sha256:2222222222222222bbbb",
        "new_image_digest": "reg.example/app@sha256:2222", "phase": "done",
        "timings": [{"phase": "pull", "ms": 1250}, {"phase": "stop_old", "ms": 310},
                    {"phase": "health", "ms": 30000}, {"phase": "rollback", "ms": 95000}],
        "health_evidence": {"method": "http", "passed": false, "checks": 30, "check_ms": 30000,
                            "stable_ms": 0, "detail": "GET /healthz answered 500 until the deadline",
                            "last_output": "HTTP 500\n"},
        "rollback_health_evidence": {"method": "http", "passed": true, "checks": 2,
                                     "check_ms": 1000, "stable_ms": 10000,
                                     "detail": "GET /healthz answered 200"},
        "reason": "the new container failed its health check",
        "failed_logs": ["starting v2", "panic: no config"], "old_stopped": true,
        "total_ms": 127000
    }))
    .unwrap()
}

#[test]
fn update_report_for_people() {
    assert_eq!(
        update_report(&rolled_back()),
        "update of web to reg.example/app:v2: rolled back: the new container failed, the old one runs again\n\
         \x20 strategy stop-first, health check http:8080/healthz\n\
         \x20 old:              reg.example/app:v1, image 111111111111, digest reg.example/app@sha256:1111, container 0123456789ab\n\
         \x20 new:              image 222222222222, digest reg.example/app@sha256:2222, container fedcba987654\n\
         \x20 reason:           the new container failed its health check\n\
         \x20 health:           http FAILED after 30 checks in 30.0s: GET /healthz answered 500 until the deadline (last output: HTTP 500)\n\
         \x20 rollback health:  http passed after 2 checks in 1.0s, then up for 10.0s: GET /healthz answered 200\n\
         \x20 timings:          pull 1.2s, stop_old 310ms, health 30.0s, rollback 1m 35s; total 2m 7s\n\
         \x20 last 2 log lines of the failed container:\n\
         \x20   starting v2\n\
         \x20   panic: no config\n"
    );
    // Nothing changed: said so, with the phase it stopped in; a recovered update says so.
    let mut unchanged = rolled_back();
    unchanged.outcome = UpdateOutcome::FailedUnchanged;
    unchanged.old_stopped = false;
    unchanged.phase = UpdatePhase::Pulling;
    unchanged.new_container_id = None;
    unchanged.new_image_id = None;
    unchanged.new_image_digest = None;
    unchanged.health_evidence = None;
    unchanged.rollback_health_evidence = None;
    unchanged.failed_logs.clear();
    unchanged.timings.clear();
    unchanged.reason = Some("pull failed: unauthorized".into());
    unchanged.recovered = true;
    unchanged.total_ms = 850;
    let text = update_report(&unchanged);
    assert!(text.starts_with("update of web to reg.example/app:v2: failed, nothing was changed\n  strategy stop-first, health check http:8080/healthz; the old container was never stopped\n"), "{text}");
    assert!(!text.contains("new:"), "{text}");
    assert!(text.contains("  ended in phase:   pulling\n"), "{text}");
    assert!(text.contains("  timings:          total 850ms\n"), "{text}");
    assert!(
        text.contains("  recovered:        the agent restarted"),
        "{text}"
    );
    assert!(!text.contains("log line"), "{text}");
    let mut broken = rolled_back();
    broken.outcome = UpdateOutcome::RollbackFailed;
    assert!(update_report(&broken).contains("ROLLBACK FAILED"));
}

#[test]
fn failed_update_command_shows_its_report() {
    let report = serde_json::to_value(rolled_back()).unwrap();
    let text = command_result(
        CommandKind::ContainerUpdate,
        &result(
            ResultStatus::Failed,
            Some(report.clone()),
            Some(("update_rolled_back", "rolled back to reg.example/app:v1")),
        ),
    );
    assert!(
        text.starts_with(
            "  error: rolled back to reg.example/app:v1 (update_rolled_back)\nupdate of web to reg.example/app:v2: rolled back"
        ),
        "{text}"
    );
    assert!(text.ends_with("    panic: no config\n"), "{text}");
    // In a job, every target's report is shown (update is the one mutating kind with output
    // worth reading).
    let job = JobInfo {
        id: "job_1".into(),
        command_id: "cmd_9".into(),
        selector: "tier=web".parse().unwrap(),
        kind: CommandKind::ContainerUpdate,
        command: Command::from_parts(
            "container.update",
            json!({"container": "web", "image": "reg.example/app:v2"}),
        )
        .unwrap(),
        state: JobState::Completed,
        max_concurrency: 1,
        max_errors: None,
        created_at: at("2026-03-01T11:59:00Z"),
        expires_at: at("2026-03-01T12:19:00Z"),
        created_by: "admin".into(),
        counts: JobCounts {
            targets: 1,
            failed: 1,
            ..Default::default()
        },
        targets: vec![JobTarget {
            agent_id: "ag_1".into(),
            agent_name: "web-1".into(),
            state: DeliveryState::Failed,
            result: Some(result(
                ResultStatus::Failed,
                Some(report),
                Some(("update_rolled_back", "rolled back")),
            )),
        }],
    };
    let text = job_outputs(&job);
    assert!(
        text.starts_with("\n== web-1 (ag_1) ==\nupdate of web to reg.example/app:v2: rolled back"),
        "{text}"
    );
}

fn record(command_id: &str, created: &str) -> UpdateRecord {
    serde_json::from_value(json!({
        "command_id": command_id, "agent_id": "ag_1", "container": "web",
        "image": "reg.example/app:v2", "health": "auto", "strategy": "stop-first",
        "requested_by": "admin", "created_at": created, "active": false, "state": "failed"
    }))
    .unwrap()
}

#[test]
fn updates_table() {
    let mut running = record("cmd_3", "2026-03-01T11:59:00Z");
    running.active = true;
    running.state = DeliveryState::Received;
    running.phase = Some("health_gate".into());
    let mut done = record("cmd_2", "2026-03-01T11:00:00Z");
    done.state = DeliveryState::Succeeded;
    done.outcome = Some(UpdateOutcome::Updated);
    done.phase = Some("done".into());
    done.finished_at = Some(at("2026-03-01T11:00:20Z"));
    let mut report = rolled_back();
    report.outcome = UpdateOutcome::Updated;
    report.total_ms = 19_500;
    done.report = Some(report);
    let mut lost = record("cmd_1", "2026-03-01T10:00:00Z");
    lost.container_name = Some("web-renamed".into());
    lost.error = Some(ErrorInfo {
        code: "no_result".into(),
        message: "no result in time".into(),
    });
    lost.finished_at = Some(at("2026-03-01T10:35:00Z"));
    let list = [running, done, lost];
    assert_eq!(
        updates(&list, now(), false),
        "CREATED  CONTAINER    IMAGE               STATUS                  PHASE        TOOK   COMMAND  BY\n\
         1m ago   web          reg.example/app:v2  in progress (received)  health_gate  -      cmd_3    admin\n\
         1h ago   web          reg.example/app:v2  updated                 done         19.5s  cmd_2    admin\n\
         2h ago   web-renamed  reg.example/app:v2  failed: no_result       -            35m    cmd_1    admin\n"
    );
    assert!(updates(&list, now(), true).starts_with("CREATED  AGENT  CONTAINER"));
    let mut undelivered = record("cmd_0", "2026-03-01T10:00:00Z");
    undelivered.state = DeliveryState::Undelivered;
    assert_eq!(update_status(&undelivered), "undelivered");
}
