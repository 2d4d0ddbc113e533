//! The docker module and the events task against the real local engine, with the
//! `flotilla-testapp` images, which scripts/test builds before running the tests. Without an
//! engine these tests fail; they never skip.

use flotilla_agent::docker::{DockerClient, DockerError, Visibility};
use flotilla_agent::events::EventsTask;
use flotilla_agent::state::{EventCursor, State};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::protocol::OutboxItem;
use flotilla_testkit::eventually;
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the docker CLI (test setup only; the agent itself uses the API).
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts the event follower's cursor a second in the past, so events from containers created
/// right after the follower is spawned are seen however long it takes to subscribe (instead of
/// sleeping and hoping it subscribed in time).
async fn prime_cursor(state: &State) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    state
        .append_events(
            Vec::new(),
            EventCursor {
                time_nano: now - 1_000_000_000,
                keys: Vec::new(),
            },
        )
        .await
        .unwrap();
}

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}

/// How long an effect of the engine may take before a test fails.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn actions_visibility_logs_and_events() {
    let run = flotilla_shared::ids::new_id("t");
    let label = format!("flotilla.test={run}");
    let web = format!("flt-{run}-web");
    let hidden = format!("flt-{run}-hidden");
    let flappy = format!("flt-{run}-flappy");
    let _cleanup = Cleanup(vec![web.clone(), hidden.clone(), flappy.clone()]);

    let dir = std::env::temp_dir().join(format!("flotilla-docker-{run}"));
    let state = State::open(&dir).await.unwrap();
    prime_cursor(&state).await;
    let client = DockerClient::new(
        None,
        Visibility::new(Some(("flotilla.test".into(), run.clone()))),
    );
    let shutdown = CancellationToken::new();
    let events_task = tokio::spawn(
        EventsTask {
            updating: Default::default(),
            docker: client.clone(),
            state: state.clone(),
            restart_loop_threshold: 3,
            restart_loop_window_secs: 60,
        }
        .run(shutdown.clone()),
    );

    docker(&[
        "create",
        "--name",
        &web,
        "--label",
        &label,
        "-e",
        "APP_LOG_LINES=5",
        "flotilla-testapp:v1",
    ]);
    docker(&[
        "create",
        "--name",
        &hidden,
        "--label",
        &label,
        "--label",
        "flotilla.ignore=true",
        "flotilla-testapp:v1",
    ]);

    // Listing: only the visible container, name without '/'.
    let list = client.list(true).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].name, web);
    assert_eq!(list[0].state, "created");

    // The ignored one is indistinguishable from a missing one.
    assert_eq!(
        client.resolve(&hidden).await.unwrap_err(),
        DockerError::NoSuchContainer(hidden.clone())
    );
    let c = client.resolve(&web).await.unwrap();
    assert_eq!(client.resolve(&c.id[..12]).await.unwrap(), c);

    let started = client.start(&c).await.unwrap();
    assert!(started.changed);
    assert_eq!(started.container.state, "running");
    let again = client.start(&c).await.unwrap();
    assert!(!again.changed);

    let lines = eventually(WAIT, "log lines", || {
        let client = client.clone();
        let c = c.clone();
        async move {
            let lines = client.logs(&c, 100, None, false).await.unwrap();
            lines
                .iter()
                .any(|l| l.contains("testapp line 5"))
                .then_some(lines)
        }
    })
    .await;
    let tail = client.logs(&c, 2, None, true).await.unwrap();
    assert_eq!(tail.len(), 2, "{tail:?} of {lines:?}");

    let inspect = client.inspect(&c).await.unwrap();
    assert_eq!(inspect["Id"], serde_json::json!(c.id));

    let stopped = client.stop(&c, Duration::from_secs(5)).await.unwrap();
    assert!(stopped.changed);
    assert_eq!(stopped.container.state, "exited");
    assert!(stopped.container.exit_code.is_some());
    assert!(
        !client
            .stop(&c, Duration::from_secs(5))
            .await
            .unwrap()
            .changed
    );
    let restarted = client.restart(&c, Duration::from_secs(5)).await.unwrap();
    assert!(restarted.changed);
    assert_eq!(restarted.container.state, "running");

    // A container that keeps dying under a restart policy makes a restart loop.
    docker(&[
        "run",
        "-d",
        "--name",
        &flappy,
        "--label",
        &label,
        "--restart",
        "always",
        "-e",
        "APP_EXIT_AFTER_SECS=0",
        "-e",
        "APP_EXIT_CODE=3",
        "flotilla-testapp:v1",
    ]);
    // And starting the hidden one must raise no event.
    docker(&["start", &hidden]);

    let items = eventually(WAIT, "restart loop event", || {
        let state = state.clone();
        async move {
            let items = state.outbox_after(0, 1000).await.unwrap();
            items
                .iter()
                .any(|(_, i)| {
                    matches!(i, OutboxItem::Event(e) if e.kind == EventKind::ContainerRestartLoop)
                })
                .then_some(items)
        }
    })
    .await;
    let events: Vec<_> = items
        .iter()
        .filter_map(|(_, i)| match i {
            OutboxItem::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert!(events
        .iter()
        .all(|e| e.container_name.as_deref() != Some(hidden.as_str())));
    assert!(events.iter().any(|e| e.kind == EventKind::ContainerStarted
        && e.container_name.as_deref() == Some(web.as_str())));
    let died = events
        .iter()
        .find(|e| {
            e.kind == EventKind::ContainerDied
                && e.container_name.as_deref() == Some(flappy.as_str())
        })
        .expect("flappy died");
    assert_eq!(died.attributes["exit_code"], "3");
    let loops = events
        .iter()
        .filter(|e| e.kind == EventKind::ContainerRestartLoop)
        .count();
    assert_eq!(loops, 1, "one restart_loop event per window");

    shutdown.cancel();
    events_task.await.unwrap().unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn events_from_while_the_agent_was_down_are_not_lost() {
    let run = flotilla_shared::ids::new_id("t");
    let label = format!("flotilla.test={run}");
    let victim = format!("flt-{run}-victim");
    let _cleanup = Cleanup(vec![victim.clone()]);
    let dir = std::env::temp_dir().join(format!("flotilla-docker-{run}"));
    let client = DockerClient::new(
        None,
        Visibility::new(Some(("flotilla.test".into(), run.clone()))),
    );
    let follow = |state: State, shutdown: CancellationToken| {
        tokio::spawn(
            EventsTask {
                updating: Default::default(),
                docker: client.clone(),
                state,
                restart_loop_threshold: 3,
                restart_loop_window_secs: 60,
            }
            .run(shutdown),
        )
    };
    let events_of = |state: State, kind: EventKind| {
        let victim = victim.clone();
        async move {
            state
                .outbox_after(0, 1000)
                .await
                .unwrap()
                .into_iter()
                .filter(|(_, i)| {
                    matches!(i, OutboxItem::Event(e)
                        if e.kind == kind && e.container_name.as_deref() == Some(victim.as_str()))
                })
                .count()
        }
    };

    // First run: the start is seen and stored.
    let state = State::open(&dir).await.unwrap();
    prime_cursor(&state).await;
    let shutdown = CancellationToken::new();
    let task = follow(state.clone(), shutdown.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &victim,
        "--label",
        &label,
        "flotilla-testapp:v1",
    ]);
    eventually(WAIT, "started event", || {
        let state = state.clone();
        let events_of = &events_of;
        async move { (events_of(state, EventKind::ContainerStarted).await == 1).then_some(()) }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    drop(state);

    // While the agent is down the container dies.
    docker(&["kill", &victim]);

    // Next run (a fresh database handle, as after a restart): the death is reported, and the
    // start is not reported again.
    let state = State::open(&dir).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = follow(state.clone(), shutdown.clone());
    eventually(WAIT, "died event after the restart", || {
        let state = state.clone();
        let events_of = &events_of;
        async move { (events_of(state, EventKind::ContainerDied).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(
        events_of(state.clone(), EventKind::ContainerStarted).await,
        1
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    std::fs::remove_dir_all(dir).ok();
}
