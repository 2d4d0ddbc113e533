//! Docker events on the agent's host reach the relay within seconds: a container dying, health
//! status changes, restart loops.

use crate::{images, DEADLINE};
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use flotilla_shared::api::EventRecord;
use flotilla_shared::heartbeat::EventKind;
use flotilla_tests::harness::{eventually, scope, Agent, Api, Containers, Relay};
use std::collections::HashMap;
use std::time::Instant;

async fn wait_event(api: &Api, agent: &str, kind: EventKind, container: &str) -> EventRecord {
    eventually(
        DEADLINE,
        &format!("{} event for {container}", kind.as_str()),
        || async {
            api.events(agent).await.into_iter().find(|e| {
                e.event.kind == kind && e.event.container_name.as_deref() == Some(container)
            })
        },
    )
    .await
}

/// Creates a container with a restart policy and/or health check (beyond what the harness does).
async fn create(
    docker: &Containers,
    name: &str,
    image: &str,
    env: &[&str],
    body: ContainerCreateBody,
) -> String {
    let full = docker.run(name, image, env, &[], false).await;
    // Recreate with the extra settings under the same name (the harness tracks it for cleanup).
    docker.docker.remove_container(&full, None).await.unwrap();
    let mut labels = HashMap::new();
    labels.insert("flotilla.test".to_string(), "1".to_string());
    labels.insert("flotilla.test.scope".to_string(), docker.scope.clone());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(env.iter().map(|s| s.to_string()).collect()),
        labels: Some(labels),
        ..body
    };
    let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
        .name(&full)
        .build();
    docker
        .docker
        .create_container(Some(opts), body)
        .await
        .unwrap();
    docker.docker.start_container(&full, None).await.unwrap();
    full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn died_oom_unhealthy_and_restart_loop_events_reach_the_relay() {
    let img = images().await;
    let scope = scope("events");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;
    let agent = Agent::start(&relay, "host-a", "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    // Died: stopped behind Flotilla's back, straight through the engine.
    let t = Instant::now();
    docker
        .docker
        .stop_container(
            &web,
            Some(
                bollard::query_parameters::StopContainerOptionsBuilder::default()
                    .t(1)
                    .build(),
            ),
        )
        .await
        .unwrap();
    let died = wait_event(&api, &agent.id, EventKind::ContainerDied, &web).await;
    println!(
        "container.died reached the relay {:.2}s after the stop call",
        t.elapsed().as_secs_f64()
    );
    assert!(died.event.attributes.contains_key("exit_code"), "{died:?}");

    // Unhealthy: the app answers /health with 500 and the container's health check notices.
    let sick = create(
        &docker,
        "sick",
        &img.v1,
        &["APP_MODE=unhealthy"],
        ContainerCreateBody {
            healthcheck: Some(HealthConfig {
                test: Some(img.healthcheck_cmd()),
                interval: Some(300_000_000),
                timeout: Some(1_000_000_000),
                retries: Some(1),
                start_period: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let health = eventually(DEADLINE, "unhealthy health event", || async {
        api.events(&agent.id).await.into_iter().find(|e| {
            e.event.kind == EventKind::ContainerHealth
                && e.event.container_name.as_deref() == Some(sick.as_str())
                && e.event.attributes.get("health_status").map(String::as_str) == Some("unhealthy")
        })
    })
    .await;
    assert!(health.event.message.contains("unhealthy"), "{health:?}");

    // OOM: the app touches 128 MiB inside a 32 MiB limit and is killed by the kernel.
    let hog = create(
        &docker,
        "hog",
        &img.v1,
        &["APP_ALLOC_MB=128"],
        ContainerCreateBody {
            host_config: Some(HostConfig {
                memory: Some(32 * 1024 * 1024),
                memory_swap: Some(32 * 1024 * 1024),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let oom = wait_event(&api, &agent.id, EventKind::ContainerOom, &hog).await;
    assert!(oom.event.message.contains(&hog), "{oom:?}");
    eventually(DEADLINE, "oom_killed in heartbeat", || async {
        let hb = api.agent(&agent.id).await.heartbeat?;
        hb.docker
            .containers
            .iter()
            .find(|c| c.name == hog && c.oom_killed && c.state == "exited")
            .map(|_| ())
    })
    .await;

    // Restart loop: an image that exits at once, with restart policy always.
    let looping = create(
        &docker,
        "loop",
        &img.broken,
        &[],
        ContainerCreateBody {
            host_config: Some(HostConfig {
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let ev = wait_event(&api, &agent.id, EventKind::ContainerRestartLoop, &looping).await;
    assert!(ev.event.message.contains(&looping), "{ev:?}");
    // The heartbeat shows its restart count climbing.
    eventually(DEADLINE, "restart count in heartbeat", || async {
        let hb = api.agent(&agent.id).await.heartbeat?;
        hb.docker
            .containers
            .iter()
            .find(|c| c.name == looping && c.restart_count >= 2)
            .map(|_| ())
    })
    .await;
}
