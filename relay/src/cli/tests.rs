use super::run::{build_command, command_outcome, job_outcome};
use super::*;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_shared::api::{DeliveryState, JobCounts, JobState};
use flotilla_shared::command::{Command, ContainerListArgs, ContainerLogsArgs, ContainerStopArgs};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("flotilla").chain(args.iter().copied()))
}

fn run_args(args: &[&str]) -> RunArgs {
    match parse(args).unwrap().command {
        CliCommand::Run(r) => r,
        other => panic!("not a run: {other:?}"),
    }
}

fn command_of(args: &[&str]) -> Result<Command, String> {
    build_command(&run_args(args)).map_err(|e| e.to_string())
}

// === impl argument parsing ===

#[test]
fn global_flags_go_anywhere_and_default() {
    let cli = parse(&["agents", "--json", "--addr", "http://r:1", "--token", "t"]).unwrap();
    assert!(cli.json);
    assert_eq!(cli.addr, "http://r:1");
    assert_eq!(cli.token.as_deref(), Some("t"));
    // The env var may be set where the tests run; only check the default without it.
    if std::env::var_os("FLOTILLA_ADDR").is_none() {
        assert_eq!(parse(&["status"]).unwrap().addr, "http://127.0.0.1:8700");
    }
}

#[test]
fn token_create_parses_labels_and_durations() {
    let cli = parse(&[
        "token",
        "create",
        "--labels",
        "region=eu,tier=build",
        "--ttl",
        "1h",
        "--uses",
        "3",
        "--note",
        "rack 4",
    ])
    .unwrap();
    let CliCommand::Token(TokenCommand::Create {
        labels,
        ttl,
        uses,
        note,
    }) = cli.command
    else {
        panic!("wrong command")
    };
    assert_eq!(labels.unwrap().len(), 2);
    assert_eq!(ttl, Some(Duration::from_secs(3600)));
    assert_eq!(uses, Some(3));
    assert_eq!(note.as_deref(), Some("rack 4"));

    let e = parse(&["token", "create", "--ttl", "1w"]).unwrap_err();
    assert!(e.to_string().contains("invalid duration"), "{e}");
    let e = parse(&["token", "create", "--labels", "novalue"]).unwrap_err();
    assert!(e.to_string().contains("expected key=value"), "{e}");
}

#[test]
fn usage_errors_name_the_problem() {
    // Exactly one target.
    assert!(parse(&["run", "ping"]).is_err());
    assert!(parse(&["run", "--agent", "a", "--selector", "x=y", "ping"]).is_err());
    // Job-only flags need a selector.
    assert!(parse(&["run", "--agent", "a", "--max-errors", "1", "ping"]).is_err());
    assert!(parse(&["run", "--selector", "a=b", "--max-errors", "x%", "ping"]).is_err());
    assert!(parse(&[
        "run",
        "--agent",
        "a",
        "--all",
        "--running",
        "container.list"
    ])
    .is_err());
    assert!(parse(&["agents", "--selector", "a b"]).is_err());
    assert!(parse(&["api-token", "create", "--name", "ci", "--scope", "root"]).is_err());
    let cli = parse(&["api-token", "create", "--name", "ci", "--scope", "operate"]).unwrap();
    assert!(matches!(
        cli.command,
        CliCommand::ApiToken(ApiTokenCommand::Create {
            scope: Scope::Operate,
            ..
        })
    ));
    let cli = parse(&["agent", "label", "ag_1", ""]).unwrap();
    assert!(matches!(
        cli.command,
        CliCommand::Agent(AgentCommand::Label { labels, .. }) if labels.is_empty()
    ));
}

#[test]
fn run_flags_fill_the_command_arguments() {
    assert_eq!(
        command_of(&[
            "run",
            "--agent",
            "a",
            "container.stop",
            "--container",
            "web",
            "--timeout",
            "1"
        ]),
        Ok(Command::ContainerStop(ContainerStopArgs {
            container: "web".into(),
            timeout_secs: Some(1),
        }))
    );
    assert_eq!(
        command_of(&[
            "run",
            "--agent",
            "a",
            "container.restart",
            "--container",
            "web",
            "--timeout",
            "2m"
        ]),
        Ok(Command::ContainerRestart(ContainerStopArgs {
            container: "web".into(),
            timeout_secs: Some(120),
        }))
    );
    assert_eq!(
        command_of(&[
            "run",
            "--agent",
            "a",
            "container.logs",
            "--container",
            "web",
            "--tail",
            "5",
            "--since",
            "2026-01-01T00:00:00Z",
            "--timestamps",
        ]),
        Ok(Command::ContainerLogs(ContainerLogsArgs {
            container: "web".into(),
            tail: Some(5),
            since: Some("2026-01-01T00:00:00Z".into()),
            timestamps: true,
        }))
    );
    assert_eq!(
        command_of(&["run", "--selector", "a=b", "container.list", "--running"]),
        Ok(Command::ContainerList(ContainerListArgs { all: false }))
    );
    assert_eq!(
        command_of(&["run", "--selector", "a=b", "container.list"]),
        Ok(Command::ContainerList(ContainerListArgs { all: true }))
    );
}

#[test]
fn args_json_merges_under_the_flags() {
    assert_eq!(
        command_of(&[
            "run",
            "--agent",
            "a",
            "container.stop",
            "--args",
            r#"{"container": "old", "timeout_secs": 7}"#,
            "--container",
            "web",
        ]),
        Ok(Command::ContainerStop(ContainerStopArgs {
            container: "web".into(),
            timeout_secs: Some(7),
        }))
    );
    let e = command_of(&["run", "--agent", "a", "ping", "--args", "[1]"]).unwrap_err();
    assert_eq!(e, "--args must be a JSON object, not [1]");
    let e = command_of(&["run", "--agent", "a", "ping", "--args", "{"]).unwrap_err();
    assert!(e.starts_with("--args is not valid JSON"), "{e}");
}

#[test]
fn bad_commands_are_refused_before_any_request() {
    let e = command_of(&["run", "--agent", "a", "container.nuke"]).unwrap_err();
    assert!(e.contains("unknown command kind \"container.nuke\""), "{e}");
    let e = command_of(&["run", "--agent", "a", "container.stop"]).unwrap_err();
    assert!(e.contains("missing field `container`"), "{e}");
    let e = command_of(&["run", "--agent", "a", "ping", "--container", "web"]).unwrap_err();
    assert!(e.contains("unknown field `container`"), "{e}");
    let e = command_of(&[
        "run",
        "--agent",
        "a",
        "container.logs",
        "--container",
        "w",
        "--tail",
        "99999",
    ])
    .unwrap_err();
    assert!(e.contains("tail must be at most"), "{e}");
}

// === impl exit outcomes ===

fn command_info(state: DeliveryState) -> CommandInfo {
    serde_json::from_value(json!({
        "id": "cmd_1", "agent_id": "ag_1", "kind": "ping",
        "command": {"kind": "ping", "args": {}}, "state": state,
        "created_at": "2026-03-01T12:00:00Z", "expires_at": "2026-03-01T12:10:00Z",
        "created_by": "admin",
    }))
    .unwrap()
}

fn job_info(state: JobState, counts: JobCounts) -> JobInfo {
    serde_json::from_value(json!({
        "id": "job_1", "command_id": "cmd_1", "selector": "a=b", "kind": "ping",
        "command": {"kind": "ping", "args": {}}, "state": state, "max_concurrency": 2,
        "max_errors": 0, "created_at": "2026-03-01T12:00:00Z",
        "expires_at": "2026-03-01T12:10:00Z", "created_by": "admin", "counts": counts,
        "targets": [],
    }))
    .unwrap()
}

#[test]
fn command_outcomes() {
    let wait = Duration::from_secs(60);
    assert_eq!(
        command_outcome(&command_info(DeliveryState::Succeeded), true, wait),
        Outcome::Success
    );
    for s in [
        DeliveryState::Failed,
        DeliveryState::Rejected,
        DeliveryState::Undelivered,
    ] {
        assert!(matches!(
            command_outcome(&command_info(s), true, wait),
            Outcome::Failed(_)
        ));
    }
    assert_eq!(
        command_outcome(&command_info(DeliveryState::Sent), true, wait),
        Outcome::Failed("command cmd_1 is still sent after waiting 1m".into())
    );
    assert_eq!(
        command_outcome(&command_info(DeliveryState::Queued), false, wait),
        Outcome::Success
    );
}

#[test]
fn job_outcomes() {
    let wait = Duration::from_secs(60);
    let ok = JobCounts {
        targets: 2,
        succeeded: 1,
        undelivered: 1,
        ..Default::default()
    };
    assert_eq!(
        job_outcome(&job_info(JobState::Completed, ok.clone()), true, wait),
        Outcome::Success
    );
    let failed = JobCounts {
        targets: 2,
        succeeded: 1,
        failed: 1,
        ..Default::default()
    };
    assert_eq!(
        job_outcome(&job_info(JobState::Completed, failed.clone()), true, wait),
        Outcome::Failed("job job_1 completed with 1 of 2 targets failed or rejected".into())
    );
    assert!(matches!(
        job_outcome(&job_info(JobState::Stopped, failed), true, wait),
        Outcome::Failed(_)
    ));
    assert!(matches!(
        job_outcome(&job_info(JobState::Running, ok.clone()), true, wait),
        Outcome::Failed(_)
    ));
    assert_eq!(
        job_outcome(&job_info(JobState::Running, ok), false, wait),
        Outcome::Success
    );
}

// === impl against a stand-in API ===
//
// A tiny axum server plays the relay's API routes the CLI uses, so the HTTP side (bearer token,
// paths, `?wait=`, polling, error bodies) is checked without the real relay.

#[derive(Default)]
struct Fake {
    polls: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

async fn start_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/api/v1/agents/{id}/commands", post(create_command))
        .route("/api/v1/commands/{id}", get(get_command))
        .route("/api/v1/jobs", post(create_job))
        .route("/api/v1/jobs/{id}", get(get_job))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn unauthorized(headers: &HeaderMap) -> Option<(StatusCode, Json<Value>)> {
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret")).then(
        || {
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "unauthorized", "message": "unknown api token"}})),
            )
        },
    )
}

async fn create_command(
    State(fake): State<Arc<Fake>>,
    Path(agent): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    fake.seen.lock().unwrap().push(format!(
        "POST {agent} wait={:?} body={body}",
        query.get("wait")
    ));
    if agent == "ag_missing" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "not_found", "message": "unknown agent ag_missing"}})),
        );
    }
    let mut info = serde_json::to_value(command_info(DeliveryState::Sent)).unwrap();
    info["agent_id"] = agent.into();
    (StatusCode::CREATED, Json(info))
}

async fn get_command(
    State(fake): State<Arc<Fake>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let n = fake.polls.fetch_add(1, Ordering::SeqCst);
    fake.seen
        .lock()
        .unwrap()
        .push(format!("GET {id} agent={:?}", query.get("agent")));
    let state = if n == 0 {
        DeliveryState::Received
    } else {
        DeliveryState::Failed
    };
    let mut info = serde_json::to_value(command_info(state)).unwrap();
    if state == DeliveryState::Failed {
        info["result"] = json!({
            "command_id": "cmd_1", "status": "failed",
            "error": {"code": "no_such_container", "message": "no such container: nope"},
            "started_at": "2026-03-01T12:00:01Z", "finished_at": "2026-03-01T12:00:01Z",
        });
    }
    Json(info)
}

async fn create_job(
    State(fake): State<Arc<Fake>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    fake.seen
        .lock()
        .unwrap()
        .push(format!("POST job body={body}"));
    (
        StatusCode::CREATED,
        Json(serde_json::to_value(job_info(JobState::Running, JobCounts::default())).unwrap()),
    )
}

async fn get_job(State(fake): State<Arc<Fake>>, Path(_id): Path<String>) -> Json<Value> {
    let n = fake.polls.fetch_add(1, Ordering::SeqCst);
    let (state, counts) = if n < 2 {
        (JobState::Running, JobCounts::default())
    } else {
        (
            JobState::Completed,
            JobCounts {
                targets: 1,
                succeeded: 1,
                ..Default::default()
            },
        )
    };
    Json(serde_json::to_value(job_info(state, counts)).unwrap())
}

fn cli(addr: &str, args: &[&str]) -> Cli {
    let mut full = vec!["--addr", addr, "--token", "secret"];
    full.extend_from_slice(args);
    parse(&full).unwrap()
}

#[tokio::test]
async fn single_command_waits_then_polls_until_final() {
    let (addr, fake) = start_fake().await;
    let outcome = execute(&cli(
        &addr,
        &[
            "run",
            "--agent",
            "ag_1",
            "container.start",
            "--container",
            "nope",
            "--wait",
            "--wait-timeout",
            "20s",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Outcome::Failed("command cmd_1 failed: no such container: nope".into())
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            r#"POST ag_1 wait=Some("20") body={"args":{"container":"nope"},"kind":"container.start"}"#
                .to_string(),
            r#"GET cmd_1 agent=Some("ag_1")"#.to_string(),
            r#"GET cmd_1 agent=Some("ag_1")"#.to_string(),
        ]
    );
}

#[tokio::test]
async fn api_errors_and_bad_tokens_are_exit_2_with_the_api_message() {
    let (addr, _fake) = start_fake().await;
    let err = execute(&cli(&addr, &["run", "--agent", "ag_missing", "ping"]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "unknown agent ag_missing");
    let mut wrong = cli(&addr, &["run", "--agent", "ag_1", "ping"]);
    wrong.token = Some("wrong".into());
    let err = execute(&wrong).await.unwrap_err();
    assert!(matches!(err, CliError::Api { status: 401, .. }), "{err:?}");
    assert_eq!(err.to_string(), "unknown api token");
}

#[tokio::test]
async fn jobs_poll_until_no_longer_running() {
    let (addr, fake) = start_fake().await;
    let outcome = execute(&cli(
        &addr,
        &[
            "run",
            "--selector",
            "tier=build",
            "container.list",
            "--max-concurrency",
            "50%",
            "--max-errors",
            "0",
            "--ttl",
            "5m",
            "--wait",
            "--json",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Success);
    assert_eq!(fake.polls.load(Ordering::SeqCst), 3);
    let seen = fake.seen.lock().unwrap().clone();
    let body: Value =
        serde_json::from_str(seen[0].strip_prefix("POST job body=").unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"selector": "tier=build", "kind": "container.list", "args": {"all": true},
               "max_concurrency": "50%", "max_errors": "0", "ttl_secs": 300})
    );
}

#[tokio::test]
async fn unreachable_relay_is_a_clear_transport_error() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let err = execute(&cli("http://127.0.0.1:9", &["agents"]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot reach the relay at http://127.0.0.1:9"),
        "{text}"
    );
}
