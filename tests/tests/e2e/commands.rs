//! Container commands have their real effect on the engine; ignored containers are invisible.

use crate::{images, DEADLINE};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::{
    Command, ContainerListArgs, ContainerListOutput, ContainerLogsArgs, ContainerLogsOutput,
    ContainerRef, ContainerStopArgs, ResultStatus,
};
use flotilla_tests::harness::{scope, Agent, Containers, Relay};

fn stop_args(container: &str) -> ContainerStopArgs {
    ContainerStopArgs {
        container: container.to_string(),
        timeout_secs: Some(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_managed_containers_and_hides_ignored_ones() {
    let img = images().await;
    let scope = scope("list");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let stopped = docker.run("idle", &img.v1, &[], &[], false).await;
    let hidden = docker
        .run("secret", &img.v1, &[], &[("flotilla.ignore", "true")], true)
        .await;

    let relay = Relay::start().await;
    let agent = Agent::start(&relay, "host-a", "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    let info = api
        .command(
            &agent.id,
            Command::ContainerList(ContainerListArgs {
                all: true,
                label: None,
            }),
            Some(30),
        )
        .await
        .unwrap();
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let out: ContainerListOutput =
        serde_json::from_value(info.result.unwrap().output.unwrap()).unwrap();
    let mut names: Vec<&str> = out.containers.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    let mut expected = vec![web.as_str(), stopped.as_str()];
    expected.sort();
    assert_eq!(
        names, expected,
        "the ignored container {hidden} must be invisible"
    );

    // Running only.
    let info = api
        .command(
            &agent.id,
            Command::ContainerList(ContainerListArgs {
                all: false,
                label: None,
            }),
            Some(30),
        )
        .await
        .unwrap();
    let out: ContainerListOutput =
        serde_json::from_value(info.result.unwrap().output.unwrap()).unwrap();
    assert_eq!(out.containers.len(), 1);

    // The ignored container cannot be touched and is reported exactly like an unknown one.
    for name in [hidden.as_str(), "no-such-container-anywhere"] {
        let info = api
            .command(&agent.id, Command::ContainerStop(stop_args(name)), Some(30))
            .await
            .unwrap();
        assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
        let result = info.result.unwrap();
        assert_eq!(result.status, ResultStatus::Failed);
        let err = result.error.unwrap();
        assert_eq!(err.code, "no_such_container");
        assert!(err.message.contains(name), "{}", err.message);
    }
    assert!(docker.running(&hidden).await, "ignored container untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_restart_and_logs_act_on_the_real_engine() {
    let img = images().await;
    let scope = scope("life");
    let docker = Containers::new(&scope).await;
    let web = docker
        .run("web", &img.v1, &["APP_LOG_LINES=5"], &[], true)
        .await;

    let relay = Relay::start().await;
    let agent = Agent::start(&relay, "host-a", "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    let run = |c: Command| {
        let api = api.clone();
        let id = agent.id.clone();
        async move {
            let info = api.command(&id, c, Some(60)).await.unwrap();
            assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
            info.result.unwrap().output.unwrap()
        }
    };

    run(Command::ContainerStop(stop_args(&web))).await;
    assert!(!docker.running(&web).await, "stopped on the engine");

    // Stopping again is not an error: nothing changes.
    let out = run(Command::ContainerStop(stop_args(&web))).await;
    assert_eq!(out["changed"], false);

    run(Command::ContainerStart(ContainerRef {
        container: web.clone(),
    }))
    .await;
    assert!(docker.running(&web).await, "started on the engine");

    let before = docker.state(&web).await.started_at.unwrap();
    run(Command::ContainerRestart(stop_args(&web))).await;
    let after = docker.state(&web).await;
    assert_eq!(after.running, Some(true));
    assert_ne!(after.started_at.unwrap(), before, "restart started it anew");

    // Inspect returns the engine's own document.
    let out = run(Command::ContainerInspect(ContainerRef {
        container: web.clone(),
    }))
    .await;
    assert_eq!(out["Name"], format!("/{web}"));

    let out = run(Command::ContainerLogs(ContainerLogsArgs {
        container: web.clone(),
        tail: Some(1000),
        since: None,
        timestamps: false,
    }))
    .await;
    let logs: ContainerLogsOutput = serde_json::from_value(out).unwrap();
    for i in 1..=5 {
        let line = format!("testapp line {i}");
        assert!(
            logs.lines.iter().any(|l| l.trim_end() == line),
            "{line:?} in {:?}",
            logs.lines
        );
    }
    // tail N returns the last N lines.
    let out = run(Command::ContainerLogs(ContainerLogsArgs {
        container: web.clone(),
        tail: Some(2),
        since: None,
        timestamps: false,
    }))
    .await;
    let logs: ContainerLogsOutput = serde_json::from_value(out).unwrap();
    assert_eq!(logs.lines.len(), 2, "{:?}", logs.lines);
}
