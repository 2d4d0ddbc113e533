use super::super::{agent_detail, command_info, job_outputs};
use super::*;
use flotilla_shared::api::{
    AgentDetail, AgentFacts, AgentInfo, AgentStatus, CommandInfo, DeliveryState, JobCounts,
    JobInfo, JobState, JobTarget,
};
use flotilla_shared::backup::{
    AgentBackupAlert, BackupEngine, BackupManifest, BackupRestoreArgs, BackupRunArgs,
    DatabaseOutcome, DatabaseState, DestinationCopy, RemoteSync, ReportSource, VerifyCheck,
};
use flotilla_shared::command::{Command, CommandKind, CommandResult, ErrorInfo, ResultStatus};
use flotilla_shared::heartbeat::Heartbeat;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn now() -> DateTime<Utc> {
    at("2026-03-01T12:00:00Z")
}

/// Compares rendered text with what is expected, showing both in full when they differ.
fn check(actual: String, expected: &str) {
    assert_eq!(
        actual, expected,
        "\n--- actual ---\n{actual}\n--- expected ---\n{expected}"
    );
}

fn manifest(id: &str, database: &str, status: BackupStatus) -> BackupManifest {
    BackupManifest {
        id: id.into(),
        run_id: "run_20260301".into(),
        job: "pg".into(),
        engine: BackupEngine::Postgres,
        container: "pg".into(),
        database: database.into(),
        status,
        started_at: at("2026-03-01T03:00:00Z"),
        finished_at: at("2026-03-01T03:00:12Z"),
        duration_ms: 12_000,
        bytes: 10 << 20,
        compressed_bytes: 3 << 20,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        file: format!("pg/{database}/{id}.pgdump.zst"),
        compression_level: 3,
        encrypted: database == "shop",
        tool_versions: Default::default(),
        exit_code: Some(0),
        error: None,
        destinations: vec![
            DestinationCopy {
                name: "local".into(),
                kind: "local".into(),
                state: CopyState::Stored,
                location: format!("/var/lib/flotilla/backups/pg/{database}"),
                error: None,
                at: at("2026-03-01T03:00:12Z"),
            },
            DestinationCopy {
                name: "offsite".into(),
                kind: "s3".into(),
                state: if database == "app" {
                    CopyState::Stored
                } else {
                    CopyState::Failed
                },
                location: format!("s3://backups/pg/{database}"),
                error: (database != "app").then(|| "403 Forbidden".into()),
                at: at("2026-03-01T03:00:14Z"),
            },
        ],
    }
}

fn outcome(key: &str, status: BackupStatus, error: Option<&str>) -> DatabaseOutcome {
    DatabaseOutcome {
        key: key.into(),
        container: Some("pg".into()),
        database: key.split('/').nth(1).map(String::from),
        engine: Some(BackupEngine::Postgres),
        status,
        error: error.map(String::from),
        backup_id: (status == BackupStatus::Success).then(|| format!("bk_{}", key.len())),
        size_bytes: (status == BackupStatus::Success).then_some(3 << 20),
        duration_ms: Some(1500),
    }
}

fn run_report(failed: bool) -> BackupReport {
    BackupReport {
        run_id: "run_1".into(),
        source: ReportSource::Agent,
        job: Some("pg".into()),
        trigger: None,
        started_at: at("2026-03-01T03:00:00Z"),
        finished_at: at("2026-03-01T03:00:04Z"),
        databases: vec![
            outcome("pg/app", BackupStatus::Success, None),
            if failed {
                outcome(
                    "pg/shop",
                    BackupStatus::Failed,
                    Some("pg_dump: error: connection to server failed\nFATAL: role \"x\""),
                )
            } else {
                outcome("pg/shop", BackupStatus::Success, None)
            },
        ],
        remote_sync: Some(RemoteSync {
            status: if failed {
                BackupStatus::Failed
            } else {
                BackupStatus::Success
            },
            uploaded_bytes: 3 << 20,
            error: failed.then(|| "offsite: 403 Forbidden".into()),
        }),
        pruned: if failed { 0 } else { 2 },
    }
}

fn record(key: &str, status: BackupStatus, finished: &str) -> BackupRecord {
    BackupRecord {
        agent_id: "ag_1".into(),
        run_id: format!("run_{}", &finished[8..10]),
        source: "agent".into(),
        job: Some("pg".into()),
        key: key.into(),
        container: Some("pg".into()),
        database: key.split('/').nth(1).map(String::from),
        engine: Some("postgres".into()),
        status,
        error: (status == BackupStatus::Failed).then(|| "pg_dump: connection refused".into()),
        backup_id: (status == BackupStatus::Success).then(|| "bk_1".into()),
        size_bytes: (status == BackupStatus::Success).then_some(1536),
        started_at: at(finished),
        finished_at: at(finished),
    }
}

fn db_state(
    agent: &str,
    latest: BackupRecord,
    state: DatabaseState,
    last_success: Option<&str>,
) -> DatabaseBackupState {
    DatabaseBackupState {
        agent_id: latest.agent_id.clone(),
        agent_name: agent.into(),
        key: latest.key.clone(),
        state,
        latest,
        last_success_at: last_success.map(at),
    }
}

fn command(kind: CommandKind, state: DeliveryState, result: CommandResult) -> CommandInfo {
    let command = match kind {
        CommandKind::BackupRun => Command::BackupRun(BackupRunArgs::default()),
        _ => Command::BackupRestore(BackupRestoreArgs {
            id: "bk_1".into(),
            into: None,
            database: None,
            force: false,
            ..Default::default()
        }),
    };
    CommandInfo {
        id: "cmd_b".into(),
        agent_id: "ag_1".into(),
        kind,
        command,
        state,
        created_at: at("2026-03-01T11:59:00Z"),
        expires_at: at("2026-03-01T17:59:00Z"),
        created_by: "admin".into(),
        job_id: None,
        result: Some(result),
    }
}

fn result(status: ResultStatus, output: serde_json::Value, error: Option<&str>) -> CommandResult {
    CommandResult {
        command_id: "cmd_b".into(),
        status,
        output: Some(output),
        error: error.map(|code| ErrorInfo {
            code: code.into(),
            message: "1 of 2 databases failed".into(),
        }),
        started_at: at("2026-03-01T11:59:01Z"),
        finished_at: at("2026-03-01T11:59:05Z"),
    }
}

#[test]
fn backup_list_table() {
    let out = BackupListOutput {
        backups: vec![
            manifest("bk_2", "shop", BackupStatus::Success),
            manifest("bk_1", "app", BackupStatus::Success),
        ],
        truncated: true,
        offsite: vec![],
        offsite_errors: vec![],
    };
    check(
        backup_list(&out),
        "\
ID    JOB  DATABASE  STATUS               FINISHED              SIZE     SHA256        DESTINATIONS
bk_2  pg   shop      success (encrypted)  2026-03-01T03:00:12Z  3.0 MiB  9f86d081884c  local, offsite (failed)
bk_1  pg   app       success              2026-03-01T03:00:12Z  3.0 MiB  9f86d081884c  local, offsite
(more backups match; raise --limit or narrow with --job/--database)
",
    );
    check(
        backup_list(&BackupListOutput {
            backups: vec![],
            truncated: false,
            offsite: vec![],
            offsite_errors: vec![],
        }),
        "no backups\n",
    );
}

#[test]
fn offsite_backup_list_table() {
    let mut m = manifest("bk_9", "appdb", BackupStatus::Success);
    m.encrypted = true;
    let out = BackupListOutput {
        backups: vec![],
        truncated: false,
        offsite: vec![flotilla_shared::backup::OffsiteBackup {
            destination: "offsite".into(),
            source_agent: "vps-a".into(),
            location: "fleet/vps-a/pg/x.pgdump.zst.age".into(),
            manifest: m,
        }],
        offsite_errors: vec!["destination b2 (s3): list of / failed: timed out".into()],
    };
    check(
        backup_list(&out),
        "\
ID    SOURCE AGENT  JOB  DATABASE  FINISHED              SIZE                 DESTINATION
bk_9  vps-a         pg   appdb     2026-03-01T03:00:12Z  3.0 MiB (encrypted)  offsite
warning: destination b2 (s3): list of / failed: timed out
",
    );
}

#[test]
fn backup_run_per_database_sync_and_retention() {
    check(
        backup_run(&BackupRunOutput {
            reports: vec![run_report(true)],
        }),
        "\
run run_1 of job pg: 2 databases, 1 failed, took 4.0s
  DATABASE  STATUS   SIZE     TOOK  BACKUP  ERROR
  pg/app    success  3.0 MiB  1.5s  bk_6    -
  pg/shop   FAILED   -        1.5s  -       pg_dump: error: connection to server failed
  off-site copies: FAILED after 3.0 MiB uploaded: offsite: 403 Forbidden
  retention: nothing pruned (a run with a failure never prunes)
",
    );
    let ok = backup_run(&BackupRunOutput {
        reports: vec![run_report(false), run_report(false)],
    });
    assert!(ok.contains("  off-site copies: done, 3.0 MiB uploaded\n  retention: 2 old backups pruned\n\nrun run_1"), "{ok}");
    check(
        backup_run(&BackupRunOutput { reports: vec![] }),
        "no backup job ran (none configured or discovered)\n",
    );
}

#[test]
fn long_errors_are_cut_in_tables() {
    let long = "x".repeat(200);
    let cell = error_cell(Some(&format!("\n  {long}\nsecond line")));
    assert_eq!(cell.chars().count(), ERROR_CELL_CHARS);
    assert!(cell.ends_with("..."));
    assert_eq!(error_cell(None), "-");
    assert_eq!(error_cell(Some("  ")), "-");
}

#[test]
fn backup_verify_checks() {
    let out = BackupVerifyOutput {
        id: "bk_1".into(),
        ok: false,
        checks: vec![
            VerifyCheck {
                check: "checksum".into(),
                ok: true,
                detail: "sha256 matches the manifest".into(),
            },
            VerifyCheck {
                check: "engine_listing".into(),
                ok: false,
                detail: "pg_restore --list: unexpected end of file".into(),
            },
        ],
    };
    check(
        backup_verify(&out),
        "\
backup bk_1: VERIFY FAILED
  RESULT  CHECK           DETAIL
  ok      checksum        sha256 matches the manifest
  FAIL    engine_listing  pg_restore --list: unexpected end of file
",
    );
    let passed = BackupVerifyOutput {
        ok: true,
        checks: vec![out.checks[0].clone()],
        ..out
    };
    assert!(backup_verify(&passed).starts_with("backup bk_1: verified, every check passed\n"));
}

#[test]
fn backup_restore_line() {
    check(
        backup_restore(&BackupRestoreOutput {
            id: "bk_1".into(),
            container: "pg-staging".into(),
            database: "app_copy".into(),
            bytes: 1 << 30,
            duration_ms: 83_000,
        }),
        "restored backup bk_1 into database app_copy of container pg-staging: 1.0 GiB in 1m 23s\n",
    );
}

#[test]
fn fleet_table() {
    let fleet = FleetBackups {
        databases: vec![
            db_state(
                "db-1",
                record("pg/shop", BackupStatus::Failed, "2026-03-01T03:00:00Z"),
                DatabaseState::Failed,
                Some("2026-02-28T03:00:00Z"),
            ),
            db_state(
                "web-1",
                record("pg/app", BackupStatus::Success, "2026-02-26T03:00:00Z"),
                DatabaseState::Stale,
                Some("2026-02-26T03:00:00Z"),
            ),
            db_state(
                "web-1",
                record("pg/new", BackupStatus::Failed, "2026-03-01T11:00:00Z"),
                DatabaseState::Failed,
                None,
            ),
        ],
        truncated: false,
    };
    check(
        fleet_backups(&fleet, now()),
        "\
AGENT  KEY      STATE   LAST BACKUP  LAST SUCCESS  SIZE     ERROR
db-1   pg/shop  failed  9h ago       1d ago        -        pg_dump: connection refused
web-1  pg/app   stale   3d ago       3d ago        1.5 KiB  -
web-1  pg/new   failed  1h ago       never         -        pg_dump: connection refused
",
    );
    check(
        fleet_backups(&FleetBackups::default(), now()),
        "no backups reported\n",
    );
}

#[test]
fn agent_view_alert_latest_and_history() {
    let b = AgentBackups {
        agent_id: "ag_1".into(),
        alert: AgentBackupAlert {
            level: BackupAlertLevel::Medium,
            reason: "1 of 2 databases failed their latest backup or are stale".into(),
        },
        databases: vec![
            db_state(
                "db-1",
                record("pg/app", BackupStatus::Success, "2026-03-01T03:00:00Z"),
                DatabaseState::Ok,
                Some("2026-03-01T03:00:00Z"),
            ),
            db_state(
                "db-1",
                record("pg/shop", BackupStatus::Failed, "2026-03-01T03:00:00Z"),
                DatabaseState::Failed,
                Some("2026-02-28T03:00:00Z"),
            ),
        ],
        history: vec![
            record("pg/app", BackupStatus::Success, "2026-03-01T03:00:00Z"),
            record("pg/shop", BackupStatus::Failed, "2026-03-01T03:00:00Z"),
            record("pg/shop", BackupStatus::Success, "2026-02-28T03:00:00Z"),
        ],
    };
    check(
        agent_backups(&b, now()),
        "\
backups of agent ag_1: medium alert: 1 of 2 databases failed their latest backup or are stale

latest per database:
  KEY      STATE   LAST BACKUP  LAST SUCCESS  SIZE     ERROR
  pg/app   ok      9h ago       9h ago        1.5 KiB  -
  pg/shop  failed  9h ago       1d ago        -        pg_dump: connection refused

history (newest first):
  FINISHED                       KEY      STATUS   SIZE     SOURCE  RUN     BACKUP  ERROR
  2026-03-01T03:00:00Z (9h ago)  pg/app   success  1.5 KiB  agent   run_01  bk_1    -
  2026-03-01T03:00:00Z (9h ago)  pg/shop  failed   -        agent   run_01  -       pg_dump: connection refused
  2026-02-28T03:00:00Z (1d ago)  pg/shop  success  1.5 KiB  agent   run_28  bk_1    -
",
    );
    let empty = AgentBackups {
        agent_id: "ag_2".into(),
        alert: AgentBackupAlert {
            level: BackupAlertLevel::None,
            reason: "no backups reported".into(),
        },
        databases: vec![],
        history: vec![],
    };
    check(
        agent_backups(&empty, now()),
        "backups of agent ag_2: no alert: no backups reported\nno backups reported\n",
    );
    let hard = AgentBackups {
        alert: AgentBackupAlert {
            level: BackupAlertLevel::Hard,
            reason: "all 2 databases failed their latest backup".into(),
        },
        ..b
    };
    assert_eq!(
        alert_line(&hard),
        "HARD ALERT: all 2 databases failed their latest backup"
    );
}

#[test]
fn heartbeat_summary_line_in_agent_show() {
    let summary = BackupSummary {
        jobs: 2,
        databases: 21,
        failed: 2,
        last_run_at: Some(at("2026-03-01T03:00:00Z")),
        last_success_at: Some(at("2026-03-01T03:00:00Z")),
        next_run_at: Some(at("2026-03-02T03:00:00Z")),
        status_file_stale: true,
    };
    check(
        backup_summary(&summary, now()),
        "2 jobs, 21 databases, 2 FAILED, last success 9h ago, next run in 15h, \
         STATUS FILE STALE (older than 48 h or unreadable)",
    );
    check(
        backup_summary(
            &BackupSummary {
                jobs: 1,
                databases: 1,
                ..BackupSummary::default()
            },
            now(),
        ),
        "1 job, 1 database, none failed, last success never, next run not scheduled",
    );

    let agent = AgentInfo {
        id: "ag_1".into(),
        name: "db-1".into(),
        labels: Default::default(),
        status: AgentStatus::Offline,
        enrolled_at: at("2026-03-01T10:00:00Z"),
        last_heartbeat_at: Some(at("2026-03-01T11:59:55Z")),
        connected_at: None,
        agent_version: "0.2.0".into(),
        facts: AgentFacts::default(),
        summary: None,
    };
    let mut heartbeat = Heartbeat {
        at: at("2026-03-01T11:59:55Z"),
        agent_version: "0.2.0".into(),
        host: Default::default(),
        docker: Default::default(),
        backup: Some(summary),
        compose_drift: Vec::new(),
    };
    let text = agent_detail(
        &AgentDetail {
            claimed_labels: Default::default(),
            agent: agent.clone(),
            heartbeat: Some(heartbeat.clone()),
        },
        now(),
    );
    assert!(
        text.contains("\n  backups:         2 jobs, 21 databases, 2 FAILED, last success 9h ago"),
        "{text}"
    );
    heartbeat.backup = None;
    let text = agent_detail(
        &AgentDetail {
            claimed_labels: Default::default(),
            agent,
            heartbeat: Some(heartbeat),
        },
        now(),
    );
    assert!(
        text.contains("\n  backups:         none configured\n"),
        "{text}"
    );
}

#[test]
fn failed_backup_run_command_shows_error_and_every_database() {
    let output = serde_json::to_value(BackupRunOutput {
        reports: vec![run_report(true)],
    })
    .unwrap();
    let info = command(
        CommandKind::BackupRun,
        DeliveryState::Failed,
        result(ResultStatus::Failed, output.clone(), Some("backup_failed")),
    );
    let text = command_info(&info, now());
    assert!(
        text.starts_with(
            "command cmd_b (backup.run) on agent ag_1: failed\n  created 1m ago by admin, expires in 5h\n  \
             error: 1 of 2 databases failed (backup_failed)\nrun run_1 of job pg: 2 databases, 1 failed"
        ),
        "{text}"
    );
    assert!(text.contains("  pg/shop   FAILED"), "{text}");

    // A job of backup.run shows every target's outcome.
    let job = JobInfo {
        id: "job_1".into(),
        command_id: "cmd_b".into(),
        selector: "".parse().unwrap(),
        kind: CommandKind::BackupRun,
        command: info.command.clone(),
        state: JobState::Completed,
        max_concurrency: 1,
        max_errors: None,
        created_at: now(),
        expires_at: now(),
        created_by: "admin".into(),
        counts: JobCounts::default(),
        targets: vec![JobTarget {
            agent_id: "ag_1".into(),
            agent_name: "db-1".into(),
            state: DeliveryState::Failed,
            result: info.result.clone(),
        }],
    };
    let outputs = job_outputs(&job);
    assert!(
        outputs.starts_with("\n== db-1 (ag_1) ==\nrun run_1 of job pg"),
        "{outputs}"
    );

    let restore = command(
        CommandKind::BackupRestore,
        DeliveryState::Succeeded,
        result(
            ResultStatus::Succeeded,
            serde_json::json!({"id": "bk_1", "container": "pg", "database": "app",
                               "bytes": 2048, "duration_ms": 900}),
            None,
        ),
    );
    assert!(command_info(&restore, now())
        .ends_with("restored backup bk_1 into database app of container pg: 2.0 KiB in 900ms\n"));
}
