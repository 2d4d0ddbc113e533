use super::super::{execute, Cli, CliCommand};
use super::*;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("flotilla").chain(args.iter().copied()))
}

fn backup_cmd(args: &[&str]) -> BackupCommand {
    match parse(args).unwrap().command {
        CliCommand::Backup(b) => b,
        other => panic!("not a backup command: {other:?}"),
    }
}

fn command_of(args: &[&str]) -> Result<Command, String> {
    backup_cmd(args).command().map_err(|e| e.to_string())
}

#[test]
fn flags_make_the_command_arguments() {
    assert_eq!(
        command_of(&[
            "backup",
            "list",
            "--agent",
            "ag_1",
            "--job",
            "pg",
            "--database",
            "app",
            "--limit",
            "5"
        ]),
        Ok(Command::BackupList(BackupListArgs {
            job: Some("pg".into()),
            database: Some("app".into()),
            limit: Some(5),
            ..Default::default()
        }))
    );
    assert_eq!(
        command_of(&["backup", "run", "--agent", "ag_1"]),
        Ok(Command::BackupRun(BackupRunArgs { job: None }))
    );
    assert_eq!(
        command_of(&["backup", "verify", "--agent", "ag_1", "bk_1"]),
        Ok(Command::BackupVerify(BackupVerifyArgs {
            id: "bk_1".into()
        }))
    );
    let restore = backup_cmd(&[
        "backup",
        "restore",
        "--agent",
        "ag_1",
        "bk_1",
        "--into",
        "pg-staging",
        "--database",
        "app_copy",
        "--force",
        "--timeout",
        "2h",
        "--ttl",
        "3h",
    ]);
    assert_eq!(
        restore.command().unwrap(),
        Command::BackupRestore(BackupRestoreArgs {
            id: "bk_1".into(),
            into: Some("pg-staging".into()),
            database: Some("app_copy".into()),
            force: true,
            ..Default::default()
        })
    );
    assert_eq!(restore.target().agent, "ag_1");
    assert_eq!(restore.target().timeout, Some(Duration::from_secs(7200)));
    assert_eq!(restore.target().ttl, Some(Duration::from_secs(3 * 3600)));
}

#[test]
fn offsite_flags_make_the_command_arguments() {
    assert_eq!(
        command_of(&[
            "backup",
            "list",
            "--agent",
            "ag_1",
            "--offsite",
            "--source-agent",
            "vps-a",
            "--destination",
            "b2"
        ]),
        Ok(Command::BackupList(BackupListArgs {
            offsite: true,
            source_agent: Some("vps-a".into()),
            destination: Some("b2".into()),
            ..Default::default()
        }))
    );
    assert_eq!(
        command_of(&[
            "backup",
            "restore",
            "--agent",
            "ag_2",
            "bk_1",
            "--offsite",
            "--into",
            "pg-new",
            "--identity",
            "/root/backup-key.txt"
        ]),
        Ok(Command::BackupRestore(BackupRestoreArgs {
            id: "bk_1".into(),
            into: Some("pg-new".into()),
            offsite: true,
            identity_file: Some("/root/backup-key.txt".into()),
            ..Default::default()
        }))
    );
    // --source-agent and --destination only make sense off-site.
    assert!(parse(&["backup", "list", "--agent", "ag_1", "--source-agent", "a"]).is_err());
}

#[test]
fn bad_flags_are_usage_errors() {
    // Refused before any request, as the relay would.
    let e = command_of(&["backup", "list", "--agent", "ag_1", "--limit", "0"]).unwrap_err();
    assert!(e.contains("limit must be between 1 and 1000"), "{e}");
    let e = command_of(&["backup", "verify", "--agent", "ag_1", ""]).unwrap_err();
    assert!(e.contains("backup id"), "{e}");
    // clap: a missing agent or id, a state that does not exist, filters of the other view.
    assert!(parse(&["backup", "run"]).is_err());
    assert!(parse(&["backup", "verify", "--agent", "ag_1"]).is_err());
    let e = parse(&["backups", "--status", "broken"]).unwrap_err();
    assert!(
        e.to_string().contains("expected ok, failed or stale"),
        "{e}"
    );
    assert!(parse(&["backups", "ag_1", "--status", "failed"]).is_err());
    assert!(parse(&["backups", "--key", "pg/app"]).is_err());
}

#[test]
fn run_and_restore_wait_six_hours_by_default_list_and_verify_a_minute() {
    let six_hours = Duration::from_secs(6 * 3600);
    assert_eq!(
        default_timeout(&command_of(&["backup", "run", "--agent", "a"]).unwrap()),
        six_hours
    );
    assert_eq!(
        default_timeout(&command_of(&["backup", "restore", "--agent", "a", "bk_1"]).unwrap()),
        six_hours
    );
    assert_eq!(
        default_timeout(&command_of(&["backup", "list", "--agent", "a"]).unwrap()),
        SHORT_TIMEOUT
    );
    assert_eq!(
        default_timeout(&command_of(&["backup", "verify", "--agent", "a", "bk_1"]).unwrap()),
        SHORT_TIMEOUT
    );
}

fn info(state: DeliveryState, error: Option<(&str, &str)>) -> CommandInfo {
    serde_json::from_value(json!({
        "id": "cmd_b", "agent_id": "ag_1", "kind": "backup.verify",
        "command": {"kind": "backup.verify", "args": {"id": "bk_1"}}, "state": state,
        "created_at": "2026-03-01T12:00:00Z", "expires_at": "2026-03-01T12:10:00Z",
        "created_by": "admin",
        "result": error.map(|(code, message)| json!({
            "command_id": "cmd_b", "status": "failed",
            "error": {"code": code, "message": message},
            "started_at": "2026-03-01T12:00:01Z", "finished_at": "2026-03-01T12:00:02Z",
        })),
    }))
    .unwrap()
}

#[test]
fn exit_outcomes() {
    let wait = Duration::from_secs(60);
    assert_eq!(
        backup_outcome(&info(DeliveryState::Succeeded, None), wait),
        Outcome::Success
    );
    assert_eq!(
        backup_outcome(
            &info(
                DeliveryState::Failed,
                Some(("verify_failed", "the checksum does not match"))
            ),
            wait
        ),
        Outcome::Failed(
            "backup.verify cmd_b failed: the checksum does not match (verify_failed)".into()
        )
    );
    assert_eq!(
        backup_outcome(&info(DeliveryState::Undelivered, None), wait),
        Outcome::Failed("backup.verify cmd_b undelivered".into())
    );
    assert_eq!(
        backup_outcome(&info(DeliveryState::Received, None), wait),
        Outcome::Failed(
            "backup.verify cmd_b is still received after waiting 1m; see it later with \
             `flotilla command show cmd_b`"
                .into()
        )
    );
}

// === impl against a stand-in API ===

/// A stand-in relay: `backup.run` is sent, received, then fails with its per-database output.
#[derive(Default)]
struct Fake {
    polls: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

fn sorted(query: HashMap<String, String>) -> Vec<(String, String)> {
    let mut q: Vec<_> = query.into_iter().collect();
    q.sort();
    q
}

fn run_info(state: &str, finished: bool) -> Value {
    let mut v = json!({
        "id": "cmd_b", "agent_id": "ag_1", "kind": "backup.run",
        "command": {"kind": "backup.run", "args": {"job": "pg"}},
        "state": state, "created_at": "2026-03-01T12:00:00Z",
        "expires_at": "2026-03-01T18:00:00Z", "created_by": "admin",
    });
    if finished {
        v["result"] = json!({
            "command_id": "cmd_b", "status": "failed",
            "error": {"code": "backup_failed", "message": "1 of 2 databases failed"},
            "output": {"reports": [{
                "run_id": "run_1", "source": {"type": "agent"}, "job": "pg",
                "started_at": "2026-03-01T12:00:01Z", "finished_at": "2026-03-01T12:00:05Z",
                "databases": [
                    {"key": "pg/app", "status": "success", "size_bytes": 1024},
                    {"key": "pg/shop", "status": "failed", "error": "connection refused"},
                ],
            }]},
            "started_at": "2026-03-01T12:00:01Z", "finished_at": "2026-03-01T12:00:05Z",
        });
    }
    v
}

async fn start_fake() -> (String, Arc<Fake>) {
    async fn create(
        State(fake): State<Arc<Fake>>,
        Path(agent): Path<String>,
        Query(query): Query<HashMap<String, String>>,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        fake.seen
            .lock()
            .unwrap()
            .push(format!("POST {agent} {:?} {body}", sorted(query)));
        (StatusCode::CREATED, Json(run_info("sent", false)))
    }
    async fn show(
        State(fake): State<Arc<Fake>>,
        Path(id): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        let n = fake.polls.fetch_add(1, Ordering::SeqCst);
        fake.seen
            .lock()
            .unwrap()
            .push(format!("GET {id} {:?}", sorted(query)));
        Json(if n == 0 {
            run_info("received", false)
        } else {
            run_info("failed", true)
        })
    }
    async fn agent_backups(
        State(fake): State<Arc<Fake>>,
        Path(agent): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        fake.seen
            .lock()
            .unwrap()
            .push(format!("GET {agent} backups {:?}", sorted(query)));
        Json(json!({
            "agent_id": agent, "alert": {"level": "none", "reason": "no backups reported"},
            "databases": [], "history": [],
        }))
    }
    async fn fleet(
        State(fake): State<Arc<Fake>>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        fake.seen
            .lock()
            .unwrap()
            .push(format!("GET fleet backups {:?}", sorted(query)));
        Json(json!({"databases": []}))
    }
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/api/v1/agents/{id}/commands", post(create))
        .route("/api/v1/commands/{id}", get(show))
        .route("/api/v1/agents/{id}/backups", get(agent_backups))
        .route("/api/v1/backups", get(fleet))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn cli(addr: &str, args: &[&str]) -> Cli {
    let mut full = vec!["--addr", addr, "--token", "secret"];
    full.extend_from_slice(args);
    parse(&full).unwrap()
}

#[tokio::test]
async fn backup_run_waits_for_the_result_and_fails_with_its_error() {
    let (addr, fake) = start_fake().await;
    let outcome = execute(&cli(
        &addr,
        &["backup", "run", "--agent", "ag_1", "--job", "pg", "--json"],
    ))
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Outcome::Failed("backup.run cmd_b failed: 1 of 2 databases failed (backup_failed)".into())
    );
    let seen = fake.seen.lock().unwrap().clone();
    // No TTL and no server-side wait: the relay gives backup.run six hours, the CLI polls.
    let poll = r#"GET cmd_b [("agent", "ag_1")]"#;
    assert_eq!(
        seen,
        [
            r#"POST ag_1 [] {"args":{"job":"pg"},"kind":"backup.run"}"#,
            poll,
            poll
        ]
    );
}

#[tokio::test]
async fn backups_views_ask_the_right_routes() {
    let (addr, fake) = start_fake().await;
    for args in [
        &["backups", "--status", "failed", "--limit", "10"][..],
        &["backups"],
        &["backups", "ag_1", "--key", "pg/app", "--limit", "5"],
    ] {
        assert_eq!(
            execute(&cli(&addr, args)).await.unwrap(),
            Outcome::Success,
            "{args:?}"
        );
    }
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            r#"GET fleet backups [("limit", "10"), ("status", "failed")]"#,
            "GET fleet backups []",
            r#"GET ag_1 backups [("key", "pg/app"), ("limit", "5")]"#,
        ]
    );
}
