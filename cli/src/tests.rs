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
        "--agent-labels",
        "rack,zone",
    ])
    .unwrap();
    let CliCommand::Token(TokenCommand::Create {
        labels,
        ttl,
        uses,
        note,
        agent_labels,
    }) = cli.command
    else {
        panic!("wrong command")
    };
    assert_eq!(labels.unwrap().len(), 2);
    assert_eq!(ttl, Some(Duration::from_secs(3600)));
    assert_eq!(uses, Some(3));
    assert_eq!(note.as_deref(), Some("rack 4"));
    assert_eq!(agent_labels, vec!["rack".to_string(), "zone".to_string()]);

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
        Ok(Command::ContainerList(ContainerListArgs {
            all: false,
            label: None
        }))
    );
    assert_eq!(
        command_of(&["run", "--selector", "a=b", "container.list"]),
        Ok(Command::ContainerList(ContainerListArgs {
            all: true,
            label: None
        }))
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

// === impl `flotilla update` and `flotilla updates` ===

fn update_args(args: &[&str]) -> UpdateArgs {
    match parse(args).unwrap().command {
        CliCommand::Update(u) => u,
        other => panic!("not an update: {other:?}"),
    }
}

#[test]
fn update_flags_make_the_update_arguments() {
    use flotilla_shared::update::{ContainerUpdateArgs, HealthSpec, UpdateStrategy};
    let args = update_args(&[
        "update",
        "--agent",
        "ag_1",
        "--container",
        "web",
        "--image",
        "reg.example/app:v2",
        "--health",
        "http:8080/healthz",
        "--health-timeout",
        "2m",
        "--stable",
        "30s",
        "--strategy",
        "start-first",
        "--ttl",
        "1h",
    ]);
    let built = update::build_update(&args).unwrap();
    assert_eq!(
        built,
        ContainerUpdateArgs {
            container: "web".into(),
            image: "reg.example/app:v2".into(),
            health: HealthSpec::Http {
                port: 8080,
                path: "/healthz".into()
            },
            health_timeout_secs: Some(120),
            stable_secs: Some(30),
            strategy: UpdateStrategy::StartFirst,
            allow_drift: false,
        }
    );
    assert_eq!(args.ttl, Some(Duration::from_secs(3600)));
    // Defaults: the agent's (auto, 120 s, 10 s, stop-first); --wait waits for both health gates,
    // both stability windows, 15 minutes of slack and a minute more.
    let plain = update::build_update(&update_args(&[
        "update",
        "--agent",
        "a",
        "--container",
        "web",
        "--image",
        "app:v2",
    ]))
    .unwrap();
    assert_eq!(plain.health, HealthSpec::Auto);
    assert_eq!((plain.health_timeout_secs, plain.stable_secs), (None, None));
    assert_eq!(plain.strategy, UpdateStrategy::StopFirst);
    assert_eq!(
        update::default_wait(&plain),
        Duration::from_secs(2 * (120 + 10) + 900 + 60)
    );
    assert_eq!(
        update::default_wait(&built),
        Duration::from_secs(2 * (120 + 30) + 900 + 60)
    );
}

#[test]
fn bad_update_flags_are_usage_errors() {
    let base = [
        "update",
        "--agent",
        "a",
        "--container",
        "web",
        "--image",
        "app:v2",
    ];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        parse(&v)
    };
    let e = with(&["--health", "http:80:x"]).unwrap_err().to_string();
    assert!(e.contains("invalid health check"), "{e}");
    let e = with(&["--health", "tcp:0"]).unwrap_err().to_string();
    assert!(e.contains("invalid health check"), "{e}");
    let e = with(&["--strategy", "yolo"]).unwrap_err().to_string();
    assert!(e.contains("expected stop-first or start-first"), "{e}");
    let e = with(&["--stable", "soon"]).unwrap_err().to_string();
    assert!(e.contains("invalid duration"), "{e}");
    assert!(parse(&["update", "--agent", "a", "--container", "web"]).is_err());
    // Values the types accept but the command does not: refused before any request.
    let e = update::build_update(&update_args(&[
        "update",
        "--agent",
        "a",
        "--container",
        "web",
        "--image",
        "app:v2",
        "--health-timeout",
        "0s",
    ]))
    .unwrap_err();
    assert!(matches!(e, CliError::Usage(_)));
    assert!(e.to_string().contains("health_timeout_secs"), "{e}");
    let e = update::build_update(&update_args(&[
        "update",
        "--agent",
        "a",
        "--container",
        "web",
        "--image",
        "app:v2",
        "--stable",
        "2h",
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("stable_secs"), "{e}");
}

fn update_info(state: DeliveryState, outcome: Option<&str>, error: Option<&str>) -> CommandInfo {
    let mut v = json!({
        "id": "cmd_u", "agent_id": "ag_1", "kind": "container.update",
        "command": {"kind": "container.update", "args": {"container": "web", "image": "app:v2"}},
        "state": state, "created_at": "2026-03-01T12:00:00Z",
        "expires_at": "2026-03-01T12:20:00Z", "created_by": "admin",
    });
    if state.is_final() {
        let mut result = json!({
            "command_id": "cmd_u",
            "status": if state == DeliveryState::Succeeded { "succeeded" } else if state == DeliveryState::Rejected { "rejected" } else { "failed" },
            "started_at": "2026-03-01T12:00:01Z", "finished_at": "2026-03-01T12:00:31Z",
        });
        if let Some(o) = outcome {
            result["output"] = json!({
                "outcome": o, "container": "web", "image": "app:v2", "strategy": "stop-first",
                "health": "auto", "phase": "done", "timings": [], "old_stopped": o != "failed_unchanged",
                "total_ms": 30000,
                "reason": (o != "updated").then_some("the new container exited with code 1"),
            });
        }
        if let Some(code) = error {
            result["error"] = json!({"code": code, "message": format!("{code} message")});
        }
        v["result"] = result;
    }
    serde_json::from_value(v).unwrap()
}

#[test]
fn update_exit_outcomes() {
    use update::update_outcome;
    let wait = Duration::from_secs(60);
    assert_eq!(
        update_outcome(
            &update_info(DeliveryState::Succeeded, Some("updated"), None),
            true,
            wait
        ),
        Outcome::Success
    );
    assert_eq!(
        update_outcome(
            &update_info(
                DeliveryState::Failed,
                Some("rolled_back"),
                Some("update_rolled_back")
            ),
            true,
            wait
        ),
        Outcome::Failed("update cmd_u rolled_back: the new container exited with code 1".into())
    );
    for outcome in ["failed_unchanged", "rollback_failed"] {
        assert!(matches!(
            update_outcome(
                &update_info(DeliveryState::Failed, Some(outcome), Some("x")),
                true,
                wait
            ),
            Outcome::Failed(m) if m.starts_with(&format!("update cmd_u {outcome}:"))
        ));
    }
    assert_eq!(
        update_outcome(
            &update_info(DeliveryState::Rejected, None, Some("policy_denied")),
            true,
            wait
        ),
        Outcome::Failed("update cmd_u rejected: policy_denied message".into())
    );
    assert_eq!(
        update_outcome(
            &update_info(DeliveryState::Undelivered, None, None),
            true,
            wait
        ),
        Outcome::Failed("update cmd_u undelivered".into())
    );
    // A succeeded delivery without an `updated` report is not a success.
    assert!(matches!(
        update_outcome(
            &update_info(DeliveryState::Succeeded, None, None),
            true,
            wait
        ),
        Outcome::Failed(_)
    ));
    assert_eq!(
        update_outcome(&update_info(DeliveryState::Received, None, None), true, wait),
        Outcome::Failed(
            "update cmd_u is still received after waiting 1m; follow it with `flotilla updates ag_1`"
                .into()
        )
    );
    assert_eq!(
        update_outcome(&update_info(DeliveryState::Queued, None, None), false, wait),
        Outcome::Success
    );
}

/// A stand-in relay for `flotilla update --wait`: the update reaches `pulling`, then
/// `health_gate`, then ends as `outcome`.
#[derive(Default)]
struct UpdateFake {
    outcome: String,
    polls: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

async fn start_update_fake(outcome: &str) -> (String, Arc<UpdateFake>) {
    let fake = Arc::new(UpdateFake {
        outcome: outcome.into(),
        ..UpdateFake::default()
    });
    async fn create(
        State(fake): State<Arc<UpdateFake>>,
        Path(agent): Path<String>,
        Query(query): Query<HashMap<String, String>>,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        fake.seen
            .lock()
            .unwrap()
            .push(format!("POST {agent} {query:?} {body}"));
        (
            StatusCode::CREATED,
            Json(serde_json::to_value(update_info(DeliveryState::Sent, None, None)).unwrap()),
        )
    }
    async fn history(
        State(fake): State<Arc<UpdateFake>>,
        Path(agent): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        let n = fake.polls.fetch_add(1, Ordering::SeqCst);
        let mut q: Vec<_> = query.into_iter().collect();
        q.sort();
        fake.seen
            .lock()
            .unwrap()
            .push(format!("GET {agent} updates {q:?}"));
        let (phase, active) = match n {
            0 => ("pulling", true),
            1 | 2 => ("health_gate", true),
            _ => ("done", false),
        };
        Json(json!([{
            "command_id": "cmd_u", "agent_id": agent, "container": "web", "image": "app:v2",
            "health": "auto", "strategy": "stop-first", "requested_by": "admin",
            "created_at": "2026-03-01T12:00:00Z", "active": active,
            "state": if active { "received" } else { "failed" }, "phase": phase,
        }]))
    }
    async fn show(
        State(fake): State<Arc<UpdateFake>>,
        Path(id): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        fake.seen
            .lock()
            .unwrap()
            .push(format!("GET {id} agent={:?}", query.get("agent")));
        let info = if fake.outcome == "updated" {
            update_info(DeliveryState::Succeeded, Some("updated"), None)
        } else {
            update_info(
                DeliveryState::Failed,
                Some(&fake.outcome),
                Some("update_rolled_back"),
            )
        };
        Json(serde_json::to_value(info).unwrap())
    }
    async fn fleet(
        State(fake): State<Arc<UpdateFake>>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        let mut q: Vec<_> = query.into_iter().collect();
        q.sort();
        fake.seen
            .lock()
            .unwrap()
            .push(format!("GET fleet updates {q:?}"));
        Json(json!([]))
    }
    let app = Router::new()
        .route("/api/v1/agents/{id}/commands", post(create))
        .route("/api/v1/agents/{id}/updates", get(history))
        .route("/api/v1/commands/{id}", get(show))
        .route("/api/v1/updates", get(fleet))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

#[tokio::test]
async fn update_wait_follows_the_history_then_reads_the_result() {
    let (addr, fake) = start_update_fake("rolled_back").await;
    let outcome = execute(&cli(
        &addr,
        &[
            "update",
            "--agent",
            "ag_1",
            "--container",
            "web",
            "--image",
            "app:v2",
            "--health",
            "tcp:8080",
            "--wait",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Outcome::Failed("update cmd_u rolled_back: the new container exited with code 1".into())
    );
    let seen = fake.seen.lock().unwrap().clone();
    // No server-side wait (the CLI follows the phases itself) and no TTL: the relay gives an
    // update a TTL that covers its run.
    assert_eq!(
        seen[0],
        r#"POST ag_1 {} {"args":{"container":"web","health":"tcp:8080","image":"app:v2","strategy":"stop-first"},"kind":"container.update"}"#
    );
    let poll = r#"GET ag_1 updates [("command_id", "cmd_u"), ("limit", "1")]"#;
    assert_eq!(&seen[1..5], [poll, poll, poll, poll]);
    assert_eq!(seen[5], r#"GET cmd_u agent=Some("ag_1")"#);
    assert_eq!(seen.len(), 6);

    let (addr, _fake) = start_update_fake("updated").await;
    let outcome = execute(&cli(
        &addr,
        &[
            "update",
            "--agent",
            "ag_1",
            "--container",
            "web",
            "--image",
            "app:v2",
            "--wait",
            "--json",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Success);
}

#[tokio::test]
async fn updates_lists_one_agent_or_the_fleet() {
    let (addr, fake) = start_update_fake("updated").await;
    let outcome = execute(&cli(
        &addr,
        &["updates", "ag_1", "--container", "web", "--active"],
    ))
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Success);
    assert_eq!(
        execute(&cli(&addr, &["updates", "--limit", "5"]))
            .await
            .unwrap(),
        Outcome::Success
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            r#"GET ag_1 updates [("active", "true"), ("container", "web"), ("limit", "50")]"#
                .to_string(),
            r#"GET fleet updates [("limit", "5")]"#.to_string(),
        ]
    );
}

// === impl the live event stream: watches, `flotilla events`, reconnects ===

/// A stand-in for `GET /api/v1/events/stream`: connection n sends `scripts[n]` (the last one
/// for any later connection) in small pieces, then ends (a dropped stream) or stays open.
struct StreamFake {
    scripts: Vec<(String, bool)>,
    connections: AtomicUsize,
    last_event_ids: Mutex<Vec<Option<String>>>,
    kinds: Mutex<Vec<Option<String>>>,
    fetches: AtomicUsize,
    /// `rollout.transition` events of `rol_1` before GET answers `completed`.
    complete_after: usize,
}

impl StreamFake {
    fn new(scripts: Vec<(String, bool)>) -> StreamFake {
        StreamFake {
            scripts,
            connections: AtomicUsize::new(0),
            last_event_ids: Mutex::default(),
            kinds: Mutex::default(),
            fetches: AtomicUsize::new(0),
            complete_after: usize::MAX,
        }
    }
}

fn sse_event(id: u64, kind: &str, subject: Option<&str>, agent: Option<&str>) -> String {
    let e = flotilla_shared::stream::FleetEvent {
        id,
        at: chrono::DateTime::from_timestamp(1_800_000_000 + id as i64, 0).unwrap(),
        kind: kind.into(),
        agent_id: agent.map(str::to_string),
        subject: subject.map(str::to_string),
        summary: format!("event {id}"),
        data: None,
    };
    format!("id: {id}\ndata: {}\n\n", serde_json::to_string(&e).unwrap())
}

const RESET: &str = "event: reset\ndata: {\"reason\":\"this client fell 3 events behind\"}\n\n";

async fn stream_route(
    State(fake): State<Arc<StreamFake>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    if let Some(denied) = unauthorized(&headers) {
        return denied.into_response();
    }
    let n = fake.connections.fetch_add(1, Ordering::SeqCst);
    fake.last_event_ids.lock().unwrap().push(
        headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap().to_string()),
    );
    fake.kinds.lock().unwrap().push(query.get("kinds").cloned());
    let (script, keep_open) = fake.scripts[n.min(fake.scripts.len() - 1)].clone();
    // Pieces of 7 bytes: events arrive split across chunks.
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = script
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    let tail = if keep_open {
        futures_util::stream::pending().boxed()
    } else {
        futures_util::stream::empty().boxed()
    };
    let body = futures_util::stream::iter(pieces).chain(tail);
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn alerts_route(State(fake): State<Arc<StreamFake>>) -> Json<Value> {
    fake.fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!([]))
}

fn rollout_json(state: &str) -> Value {
    json!({
        "id": "rol_1", "name": "web", "selector": "tier=web", "target": {"container": "web"},
        "image": "web:2", "stages": ["100%"], "order": "newest-first", "max_failures": "0",
        "on_failure": "pause", "parallelism": "1", "health": "auto", "strategy": "stop-first",
        "stage_timeout_secs": 3600, "state": state, "stage": 0, "stage_phase": "dispatching",
        "accepted_failures": 0, "stage_failures": 0, "partial": false,
        "counts": {"total": 1, "pending": 1, "updating": 0, "updated": 0, "failed": 0,
                   "undelivered": 0, "no_target": 0, "skipped": 0, "reverting": 0,
                   "reverted": 0, "revert_failed": 0},
        "created_at": "2026-03-01T12:00:00Z", "created_by": "ops",
        "updated_at": "2026-03-01T12:00:00Z",
    })
}

/// GET of `rol_1`: running, until `complete_after` fetches were made.
async fn rollout_route(State(fake): State<Arc<StreamFake>>) -> Json<Value> {
    let n = fake.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    Json(rollout_json(if n > fake.complete_after {
        "completed"
    } else {
        "running"
    }))
}

async fn start_stream_fake(fake: StreamFake, with_stream: bool) -> (ApiClient, Arc<StreamFake>) {
    let fake = Arc::new(fake);
    let mut app = Router::new()
        .route("/api/v1/alerts", get(alerts_route))
        .route("/api/v1/rollouts/{id}", get(rollout_route));
    if with_stream {
        app = app.route("/api/v1/events/stream", get(stream_route));
    }
    let app = app.with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = ApiClient::new(&format!("http://{addr}"), Some("secret".into())).unwrap();
    (client, fake)
}

/// Resolves once `done` holds, or panics after 20 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    flotilla_testkit::eventually(Duration::from_secs(20), what, || {
        let ok = done();
        async move { ok.then_some(()) }
    })
    .await
}

fn alerts_watch_args() -> alerts::AlertsArgs {
    match parse(&["alerts", "--watch"]).unwrap().command {
        CliCommand::Alerts(a) => a,
        other => panic!("not alerts: {other:?}"),
    }
}

#[tokio::test]
async fn alerts_watch_refetches_on_events_and_resumes_after_a_drop() {
    let first = format!(
        ": hello\n\n{}",
        sse_event(5, "alert.firing", Some("alr_1"), None)
    );
    let second = format!(
        "{RESET}{}",
        sse_event(6, "alert.resolved", Some("alr_1"), None)
    );
    let (client, fake) =
        start_stream_fake(StreamFake::new(vec![(first, false), (second, true)]), true).await;
    let f = fake.clone();
    let stop = async move {
        until("a reconnect and three fetches", || {
            f.connections.load(Ordering::SeqCst) >= 2 && f.fetches.load(Ordering::SeqCst) >= 3
        })
        .await;
        flotilla_testkit::hold(
            Duration::from_millis(600),
            "room for one more (coalesced) fetch after the reset and event 6, and no other",
        )
        .await;
    };
    let args = alerts_watch_args();
    let started = std::time::Instant::now();
    let outcome = alerts::watch_with(&client, &args, true, false, &mut |_| {}, stop)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Success);
    // The first look, one after event 5, and after the reconnect (+ reset + event 6, at most
    // one more since they arrive together): events, not a 2 s poll, drive it.
    let fetches = fake.fetches.load(Ordering::SeqCst);
    assert!((3..=4).contains(&fetches), "{fetches} fetches");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Resumed after the drop with the last id it saw; asked only for alerts.
    assert_eq!(
        *fake.last_event_ids.lock().unwrap(),
        vec![None, Some("5".to_string())]
    );
    assert_eq!(fake.kinds.lock().unwrap()[0].as_deref(), Some("alert"));
}

#[tokio::test]
async fn rollout_watch_follows_its_transitions_and_ignores_others() {
    // An unrelated rollout's transition and an agent's update outside this rollout do not
    // count; this rollout's transition does (then GET answers completed).
    let script = format!(
        "{}{}{}",
        sse_event(1, "rollout.transition", Some("rol_other"), None),
        sse_event(2, "update.finished", None, Some("ag_elsewhere")),
        sse_event(3, "rollout.transition", Some("rol_1"), None),
    );
    let mut fake = StreamFake::new(vec![(script, true)]);
    fake.complete_after = 1;
    let (client, fake) = start_stream_fake(fake, true).await;
    let mut out = String::new();
    let outcome = rollout::watch_with(&client, "rol_1", true, false, &mut |s| out.push_str(s))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Success);
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("\"running\"") && out.contains("\"completed\""),
        "{out}"
    );
    assert_eq!(
        fake.kinds.lock().unwrap()[0].as_deref(),
        Some("rollout.transition,update.finished,command.finished")
    );
}

#[tokio::test]
async fn watches_poll_a_relay_without_the_stream() {
    let mut fake = StreamFake::new(vec![]);
    fake.complete_after = 2;
    let (client, fake) = start_stream_fake(fake, false).await;
    let mut out = String::new();
    let outcome = rollout::watch_with(&client, "rol_1", true, false, &mut |s| out.push_str(s))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Success);
    // Polled once a second: running, running (not printed again), completed.
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 3);
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[tokio::test]
async fn events_json_prints_each_event_once_across_a_reconnect() {
    // The first connection drops after event 2; the second, resumed after 2, repeats 2 (a
    // replay overlapping what was printed) then sends 3, a reset and 4.
    let first = format!(
        "{}{}",
        sse_event(1, "agent.connected", None, Some("ag_1")),
        sse_event(2, "container.event", Some("web"), Some("ag_1"))
    );
    let second = format!(
        "{}{}{RESET}{}",
        sse_event(2, "container.event", Some("web"), Some("ag_1")),
        sse_event(3, "command.finished", Some("cmd_1"), Some("ag_1")),
        sse_event(4, "alert.firing", Some("alr_1"), None),
    );
    let (client, fake) =
        start_stream_fake(StreamFake::new(vec![(first, false), (second, true)]), true).await;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    let stop = async move {
        until("four events printed", || seen.lock().unwrap().len() >= 4).await;
        flotilla_testkit::hold(
            Duration::from_millis(200),
            "room for a duplicate to show up if the replay were printed again",
        )
        .await;
    };
    let sink = lines.clone();
    let outcome = events::tail(
        &client,
        Some("agent,container,command,alert"),
        None,
        true,
        &mut |s| sink.lock().unwrap().extend(s.lines().map(str::to_string)),
        stop,
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Success);
    let ids: Vec<u64> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            serde_json::from_str::<flotilla_shared::stream::FleetEvent>(l)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(
        *fake.last_event_ids.lock().unwrap(),
        vec![None, Some("2".to_string())]
    );
    assert_eq!(
        fake.kinds.lock().unwrap()[1].as_deref(),
        Some("agent,container,command,alert")
    );
}

#[tokio::test]
async fn events_on_a_relay_without_the_stream_is_an_error() {
    let (client, _fake) = start_stream_fake(StreamFake::new(vec![]), false).await;
    let err = events::tail(&client, None, None, false, &mut |_| {}, async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no live event stream"), "{err}");
}

// === impl --token-file and --ca-file ===

#[test]
fn token_file_is_read_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("token");
    std::fs::write(&good, "  fl_secret\n").unwrap();
    assert_eq!(
        resolve_token(None, Some(&good)).unwrap().as_deref(),
        Some("fl_secret")
    );
    let missing = dir.path().join("nope");
    let e = resolve_token(None, Some(&missing)).unwrap_err();
    assert!(matches!(e, CliError::Usage(_)));
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n\n").unwrap();
    let e = resolve_token(None, Some(&empty)).unwrap_err();
    assert!(
        e.to_string().contains(&empty.display().to_string()) && e.to_string().contains("empty"),
        "{e}"
    );
    let e = resolve_token(Some("t"), Some(&good)).unwrap_err();
    assert!(
        e.to_string().contains("--token") && e.to_string().contains("--token-file"),
        "{e}"
    );
    // An empty --token does not count as given.
    assert_eq!(
        resolve_token(Some(""), Some(&good)).unwrap().as_deref(),
        Some("fl_secret")
    );
    assert_eq!(
        resolve_token(Some("t"), None).unwrap().as_deref(),
        Some("t")
    );
    assert_eq!(resolve_token(None, None).unwrap(), None);
    // The flags parse as global options.
    let cli = parse(&[
        "agents",
        "--token-file",
        "/run/secrets/t",
        "--ca-file",
        "/etc/ca.pem",
    ])
    .unwrap();
    assert_eq!(
        cli.token_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/t"))
    );
    assert_eq!(
        cli.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
}

#[tokio::test]
async fn token_file_is_used_and_both_sources_are_a_usage_error() {
    let (client, fake) = start_stream_fake(StreamFake::new(vec![]), false).await;
    let addr = client.url(&[], &[]).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "secret\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let cli = parse(&[
        "--addr",
        &addr,
        "--token-file",
        file_arg,
        "rollout",
        "status",
        "rol_1",
    ])
    .unwrap();
    assert_eq!(execute(&cli).await.unwrap(), Outcome::Success);
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    let both = parse(&[
        "--addr",
        &addr,
        "--token",
        "secret",
        "--token-file",
        file_arg,
        "agents",
    ])
    .unwrap();
    assert!(matches!(execute(&both).await, Err(CliError::Usage(_))));
}

#[test]
fn ca_file_must_hold_pem_certificates() {
    let good = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/test-ca.pem"));
    assert_eq!(client::read_ca_file(good).unwrap().len(), 1);
    ApiClient::with_ca_file("https://relay.example", None, Some(good)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let e = ApiClient::with_ca_file("https://relay.example", None, Some(&missing)).unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = client::read_ca_file(&empty).unwrap_err();
    assert!(
        e.to_string().contains(&empty.display().to_string()) && e.to_string().contains("PEM"),
        "{e}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    assert!(client::read_ca_file(&garbage).is_err());
}
