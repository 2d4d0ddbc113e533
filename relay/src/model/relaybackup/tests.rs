use super::*;
use chrono::TimeZone;

fn manifest() -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        name: "relay-20261207T031500Z".into(),
        relay_version: "0.1.0".into(),
        schema_version: 15,
        backend: SQLITE.into(),
        created_at: Utc.with_ymd_and_hms(2026, 12, 7, 3, 15, 0).unwrap(),
        file: "relay-20261207T031500Z.sqlite.zst".into(),
        size: 1234,
        sha256: "ab".repeat(32),
        encrypted: false,
        key_file: Some("relay-20261207T031500Z.relay-key".into()),
        key_sha256: Some("cd".repeat(32)),
    }
}

#[test]
fn a_manifest_round_trips_through_json() {
    let m = manifest();
    assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
}

#[test]
fn a_manifest_with_a_path_a_newer_format_or_a_bad_checksum_is_refused_by_name() {
    let mut m = manifest();
    m.file = "../relay.db".into();
    let e = Manifest::parse(&m.to_json()).unwrap_err();
    assert!(e.contains("file \"../relay.db\""), "{e}");
    let mut m = manifest();
    m.format = MANIFEST_FORMAT + 1;
    let e = Manifest::parse(&m.to_json()).unwrap_err();
    assert!(e.contains("format 2"), "{e}");
    let mut m = manifest();
    m.sha256 = "xyz".into();
    let e = Manifest::parse(&m.to_json()).unwrap_err();
    assert!(e.contains("sha256 \"xyz\""), "{e}");
    let mut m = manifest();
    m.backend = "mysql".into();
    assert!(Manifest::parse(&m.to_json())
        .unwrap_err()
        .contains("\"mysql\""));
    assert!(Manifest::parse("{}")
        .unwrap_err()
        .contains("not a relay backup manifest"));
}

#[test]
fn backup_names_sort_by_time() {
    let a = backup_name(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
    let b = backup_name(Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap());
    assert_eq!(a, "relay-20260102T030405Z");
    assert!(a < b);
}

fn run(status: RunStatus, finished_at: DateTime<Utc>) -> RelayBackupRun {
    RelayBackupRun {
        name: backup_name(finished_at),
        relay_id: "r1".into(),
        backend: SQLITE.into(),
        started_at: finished_at,
        finished_at: Some(finished_at),
        status,
        error: (status == RunStatus::Failed).then(|| "disk full".to_string()),
        size: None,
        locations: Vec::new(),
    }
}

#[test]
fn a_failed_latest_run_is_a_problem_at_once() {
    let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
    let health = RelayBackupHealth {
        latest_finished: Some(run(RunStatus::Failed, now - Duration::minutes(5))),
        last_success_at: Some(now - Duration::hours(1)),
    };
    let p = problem(&health, now - Duration::days(10), now).unwrap();
    assert_eq!(p.subject, "failed");
    assert!(p.message.contains("disk full"), "{}", p.message);
}

#[test]
fn no_success_for_48_hours_is_stale_and_a_recent_success_is_fine() {
    let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
    let ok = |hours| RelayBackupHealth {
        latest_finished: Some(run(RunStatus::Ok, now - Duration::hours(hours))),
        last_success_at: Some(now - Duration::hours(hours)),
    };
    assert_eq!(problem(&ok(47), now - Duration::days(10), now), None);
    let p = problem(&ok(49), now - Duration::days(10), now).unwrap();
    assert_eq!(p.subject, "stale");
    // Never a success: counted from when backups were enabled (the relay's start).
    let none = RelayBackupHealth::default();
    assert_eq!(problem(&none, now - Duration::hours(47), now), None);
    let p = problem(&none, now - Duration::hours(49), now).unwrap();
    assert_eq!(p.subject, "stale");
    assert!(p.message.contains("none yet"), "{}", p.message);
}

#[test]
fn run_status_names_round_trip() {
    for s in [RunStatus::Running, RunStatus::Ok, RunStatus::Failed] {
        assert_eq!(RunStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(RunStatus::parse("done"), None);
}
