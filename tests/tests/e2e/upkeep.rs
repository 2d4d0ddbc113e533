//! Disk and self-healing end to end (issue 17 part 6), with a real agent and relay on the real
//! engine: auto-heal restarts an opted-in container that stays unhealthy (the unhealthy test
//! image), at most its hourly limit, never one that did not opt in or that an operator
//! stopped, each restart an event and a medium alert; `image.prune` removes throwaway images
//! built from the test image and keeps the ones in use or needed for a rollback; heartbeats
//! carry every running container's memory, limit and CPU read from its cgroup, and a real
//! PostgreSQL squeezed under a tight limit (`docker update --memory`) raises
//! `container_memory_high`, which resolves once the limit is generous again.

use crate::{images, DEADLINE};
use flotilla_shared::alert::{AlertInfo, AlertState, Severity};
use flotilla_shared::api::{CommandInfo, CreateCommand, DeliveryState};
use flotilla_shared::command::{Command, ContainerStopArgs};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::upkeep::{ImagePruneArgs, ImagePruneOutput, AUTOHEAL_LABEL};
use flotilla_tests::harness::{docker_cli, eventually, scope, Agent, Api, Containers, Relay};
use std::time::Duration;

async fn command(api: &Api, agent: &str, command: Command) -> CommandInfo {
    let info: CommandInfo = api
        .post(
            &format!("/api/v1/agents/{agent}/commands"),
            &CreateCommand {
                command,
                ttl_secs: Some(600),
            },
        )
        .await
        .unwrap();
    api.wait_final(&info.id, Duration::from_secs(120)).await
}

async fn autoheal_events(api: &Api, agent: &str, container: &str) -> usize {
    api.events(agent)
        .await
        .iter()
        .filter(|e| e.event.kind == EventKind::ContainerAutoheal)
        .filter(|e| e.event.container_name.as_deref() == Some(container))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoheal_restarts_an_opted_in_unhealthy_container_within_its_limit() {
    let img = images().await;
    let scope = scope("heal");
    let containers = Containers::new(&scope).await;
    let heal = containers
        .run(
            "heal",
            &img.v2_unhealthy,
            &[],
            &[(AUTOHEAL_LABEL, "true")],
            true,
        )
        .await;
    let leave = containers
        .run("leave", &img.v2_unhealthy, &[], &[], true)
        .await;
    let stopped = containers
        .run(
            "stopped",
            &img.v2_unhealthy,
            &[],
            &[(AUTOHEAL_LABEL, "true")],
            true,
        )
        .await;
    let relay = Relay::start_with_config(
        "[alerts]\nevaluate_interval_secs = 1\nmedium_notify_after_secs = 0\n",
        &[],
    )
    .await;
    let mut agent = Agent::enroll(&relay, "heal-host", "", &scope).await;
    agent.set_config(
        "[autoheal]\nunhealthy_for_secs = 3\nbackoff_secs = 0\nmax_restarts_per_hour = 2\n",
    );
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    // The operator stops one of the opted-in containers: it is never restarted.
    let info = command(
        &api,
        &agent.id,
        Command::ContainerStop(ContainerStopArgs {
            container: stopped.clone(),
            timeout_secs: Some(5),
        }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");

    let first_start = containers.state(&heal).await.started_at;
    eventually(
        Duration::from_secs(60),
        "two auto-heal restarts",
        || async { (autoheal_events(&api, &agent.id, &heal).await >= 2).then_some(()) },
    )
    .await;
    let state = containers.state(&heal).await;
    assert_ne!(state.started_at, first_start, "the container was restarted");
    let alert: AlertInfo = eventually(DEADLINE, "container_autohealed firing", || async {
        let list: Vec<AlertInfo> = api.get("/api/v1/alerts?state=all&limit=1000").await.ok()?;
        list.into_iter().find(|a| {
            a.rule == "container_autohealed" && a.subject == heal && a.state == AlertState::Firing
        })
    })
    .await;
    assert_eq!(alert.severity, Severity::Medium);
    assert!(alert.message.contains("auto-heal restarted"), "{alert:?}");
    let events = api.events(&agent.id).await;
    let e = events
        .iter()
        .find(|e| e.event.kind == EventKind::ContainerAutoheal)
        .unwrap();
    assert_eq!(
        e.event.attributes.get("outcome").map(String::as_str),
        Some("restarted")
    );
    assert!(e.event.attributes.contains_key("unhealthy_secs"));

    // The hourly limit (2) holds while it stays unhealthy: several unhealthy_for periods pass
    // without another restart. The time itself is the point.
    flotilla_testkit::hold(
        Duration::from_secs(12),
        "four unhealthy_for periods in which no third restart may happen",
    )
    .await;
    assert_eq!(autoheal_events(&api, &agent.id, &heal).await, 2);
    // Neither the container without the label nor the stopped one was touched.
    assert_eq!(autoheal_events(&api, &agent.id, &leave).await, 0);
    assert_eq!(autoheal_events(&api, &agent.id, &stopped).await, 0);
    assert!(
        !containers.running(&stopped).await,
        "the operator's stop stands"
    );
    let leave_state = containers.inspect_json(&leave).await;
    assert_eq!(leave_state["State"]["Health"]["Status"], "unhealthy");
    assert_eq!(leave_state["RestartCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_prune_removes_unused_images_and_keeps_used_and_rollback_ones() {
    let img = images().await;
    let scope = scope("prune");
    let containers = Containers::new(&scope).await;
    // Throwaway images from the test image, labelled with the test's scope (the agent's
    // only_label) so no other test's images are candidates, in a real local registry (an
    // update pulls its image).
    let registry = tokio::task::spawn_blocking(flotilla_tests::fixtures::start_registry)
        .await
        .unwrap()
        .expect("local registry");
    let tag = |t: &str| registry.reference(&format!("flotilla-prune-{scope}:{t}"));
    for t in ["junk", "used", "old"] {
        let dir = tempfile::tempdir().unwrap();
        // A layer of its own (256 KiB that no other image has), so removing it frees bytes.
        let blob: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ t.len() as u8)
            .chain(format!("{scope}-{t}").into_bytes())
            .collect();
        std::fs::write(dir.path().join("blob"), blob).unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {}\nCOPY blob /blob\nLABEL flotilla.test.scope={scope} \
                 flotilla.prune.variant={t}\n",
                img.v1
            ),
        )
        .unwrap();
        docker_cli(&["build", "-q", "-t", &tag(t), &dir.path().to_string_lossy()])
            .await
            .expect("docker build");
        if t != "junk" {
            docker_cli(&["push", "--quiet", &tag(t)])
                .await
                .expect("docker push");
        }
    }
    let web = containers.run("web", &tag("old"), &[], &[], true).await;
    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "prune-host", "", &scope).await;
    agent.set_config("[images]\nprune_interval_secs = 0\n");
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    // An update old → used: the old image is now unused but a rollback needs it.
    let result = api
        .update(
            &agent.id,
            flotilla_tests::harness::update_args(&web, &tag("used"), "running", 1),
            Duration::from_secs(120),
        )
        .await;
    result.assert_outcome(flotilla_shared::update::UpdateOutcome::Updated);

    let dry: ImagePruneOutput = {
        let info = command(
            &api,
            &agent.id,
            Command::ImagePrune(ImagePruneArgs { dry_run: true }),
        )
        .await;
        assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
        serde_json::from_value(info.result.unwrap().output.unwrap()).unwrap()
    };
    let names = |list: &[flotilla_shared::upkeep::PrunedImage]| -> Vec<String> {
        list.iter().flat_map(|i| i.tags.clone()).collect()
    };
    assert_eq!(names(&dry.removed), vec![tag("junk")], "{dry:?}");
    assert_eq!(names(&dry.kept), vec![tag("old")], "{dry:?}");
    assert!(dry.kept[0]
        .kept_because
        .as_deref()
        .unwrap_or_default()
        .contains("rollback image of"));
    assert!(
        dry.bytes_freed >= 256 * 1024,
        "the blob layer is the junk image's own: {dry:?}"
    );
    // A dry run removes nothing.
    assert!(docker_cli(&["image", "inspect", &tag("junk")])
        .await
        .is_ok());

    let info = command(
        &api,
        &agent.id,
        Command::ImagePrune(ImagePruneArgs { dry_run: false }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let done: ImagePruneOutput =
        serde_json::from_value(info.result.unwrap().output.unwrap()).unwrap();
    assert_eq!(names(&done.removed), vec![tag("junk")], "{done:?}");
    assert!(done.failed.is_empty(), "{done:?}");
    assert!(
        done.bytes_freed >= 256 * 1024,
        "measured by the engine: {done:?}"
    );
    assert!(docker_cli(&["image", "inspect", &tag("junk")])
        .await
        .is_err());
    assert!(
        docker_cli(&["image", "inspect", &tag("old")]).await.is_ok(),
        "rollback image kept"
    );
    assert!(
        docker_cli(&["image", "inspect", &tag("used")])
            .await
            .is_ok(),
        "image in use kept"
    );
    assert!(
        docker_cli(&["image", "inspect", &img.v1]).await.is_ok(),
        "not labelled: invisible"
    );

    // With keep_rollback_days = 0 the update no longer protects the old image.
    agent.kill().await;
    agent.set_config("[images]\nprune_interval_secs = 0\nkeep_rollback_days = 0\n");
    agent.run().await;
    api.wait_online(&agent.id, DEADLINE).await;
    let info = command(
        &api,
        &agent.id,
        Command::ImagePrune(ImagePruneArgs { dry_run: false }),
    )
    .await;
    let done: ImagePruneOutput =
        serde_json::from_value(info.result.unwrap().output.unwrap()).unwrap();
    assert_eq!(names(&done.removed), vec![tag("old")], "{done:?}");
    let _ = docker_cli(&["rmi", "-f", &tag("used")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_cgroup_memory_limit_and_cpu_per_container() {
    let img = images().await;
    let scope = scope("cgroup");
    let containers = Containers::new(&scope).await;
    let body = bollard::models::ContainerCreateBody {
        image: Some(img.v1.clone()),
        host_config: Some(bollard::models::HostConfig {
            memory: Some(64 * 1024 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    };
    let limited = containers.create("limited", body, true).await;
    let free = containers.run("free", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "cgroup-host", "", &scope).await;
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let hb = eventually(DEADLINE, "a heartbeat with CPU figures", || async {
        let hb = api.agent(&agent.id).await.heartbeat?;
        let all = hb
            .docker
            .containers
            .iter()
            .filter(|c| c.name == limited || c.name == free)
            .all(|c| {
                c.resources
                    .as_ref()
                    .is_some_and(|r| r.cpu_percent.is_some())
            });
        all.then_some(hb)
    })
    .await;
    let find = |n: &str| {
        hb.docker
            .containers
            .iter()
            .find(|c| c.name == n)
            .and_then(|c| c.resources.clone())
            .unwrap()
    };
    let l = find(&limited);
    assert_eq!(l.memory_limit_bytes, Some(64 * 1024 * 1024), "{l:?}");
    assert!(
        l.memory_bytes > 0 && l.memory_bytes < 64 * 1024 * 1024,
        "{l:?}"
    );
    assert!(l.memory_near_limit_since.is_none());
    let f = find(&free);
    assert_eq!(f.memory_limit_bytes, None, "{f:?}");
    assert!(f.memory_bytes > 0, "{f:?}");
    assert!(f.cpu_percent.unwrap() >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_near_its_memory_limit_raises_container_memory_high() {
    let scope = scope("memhigh");
    let name = flotilla_tests::fixtures::unique_name(&format!("{scope}-pg"));
    let db = {
        let scope = scope.clone();
        tokio::task::spawn_blocking(move || {
            flotilla_tests::fixtures::DbContainer::start(
                flotilla_tests::fixtures::DbEngine::Postgres,
                &name,
                &[("flotilla.test.scope", scope.as_str())],
                &[("POSTGRES_PASSWORD", "pw")],
            )
        })
        .await
        .unwrap()
        .expect("start PostgreSQL")
    };
    // Threshold 0 minutes: the alert fires as soon as a heartbeat shows it near the limit
    // (the 5-minute default is the relay rule's unit test).
    let relay = Relay::start_with_config(
        "[alerts]\nevaluate_interval_secs = 1\nmedium_notify_after_secs = 0\n\
         [alerts.rules.container_memory_high]\nthreshold = 0\n",
        &[],
    )
    .await;
    let mut agent = Agent::enroll(&relay, "mem-host", "", &scope).await;
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let usage = eventually(DEADLINE, "the database's memory in a heartbeat", || async {
        let hb = api.agent(&agent.id).await.heartbeat?;
        let c = hb.docker.containers.iter().find(|c| c.name == db.name())?;
        c.resources.as_ref().map(|r| r.memory_bytes)
    })
    .await;
    // A limit just above what it uses now: above 90 % of it.
    let limit = (usage as f64 / 0.95) as u64;
    let limit = limit.max(6 * 1024 * 1024).to_string();
    docker_cli(&[
        "update",
        "--memory",
        &limit,
        "--memory-swap",
        &limit,
        db.name(),
    ])
    .await
    .expect("docker update --memory");
    let alert: AlertInfo = eventually(DEADLINE, "container_memory_high firing", || async {
        let list: Vec<AlertInfo> = api.get("/api/v1/alerts?state=all&limit=1000").await.ok()?;
        list.into_iter().find(|a| {
            a.rule == "container_memory_high"
                && a.subject == db.name()
                && a.state == AlertState::Firing
        })
    })
    .await;
    assert_eq!(alert.severity, Severity::Medium);
    assert!(alert.message.contains("memory limit"), "{alert:?}");
    // A generous limit again: it resolves.
    docker_cli(&["update", "--memory", "1g", "--memory-swap", "1g", db.name()])
        .await
        .expect("docker update --memory 1g");
    eventually(DEADLINE, "container_memory_high resolved", || async {
        let a: AlertInfo = api
            .get(&format!("/api/v1/alerts/{}", alert.id))
            .await
            .ok()?;
        (a.state == AlertState::Resolved).then_some(())
    })
    .await;
}
