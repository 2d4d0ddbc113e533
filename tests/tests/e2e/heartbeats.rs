//! Enrolled agents come online, heartbeat with host and container facts, and can be listed by
//! selector.

use crate::{images, DEADLINE};
use flotilla_shared::api::{AgentInfo, AgentStatus};
use flotilla_tests::harness::{eventually, scope, Agent, Containers, Relay, TEST_HEARTBEAT_SECS};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_come_online_and_report_host_and_container_facts() {
    let img = images().await;
    let scope = scope("hb");
    let docker = Containers::new(&scope).await;
    let web = docker
        .run(
            "web",
            &img.v1,
            &[],
            &[
                ("com.docker.compose.project", "shop"),
                ("com.docker.compose.service", "web"),
            ],
            true,
        )
        .await;

    let relay = Relay::start().await;
    let a = Agent::start(&relay, "host-a", "region=eu,tier=build", &scope).await;
    let b = Agent::start(&relay, "host-b", "region=us", &scope).await;
    let api = relay.api();

    for agent in [&a, &b] {
        let detail = api.wait_online(&agent.id, DEADLINE).await;
        let hb = detail.heartbeat.expect("heartbeat");
        let host = &hb.host;
        assert!(host.cpu_count > 0, "{host:?}");
        assert!(host.memory_total_bytes > 0 && host.memory_used_bytes > 0);
        assert!(host.uptime_secs > 0);
        assert!(
            host.filesystems
                .iter()
                .any(|f| f.mount_point == "/" && f.total_bytes > 0),
            "root filesystem reported: {:?}",
            host.filesystems
        );
        assert!(
            hb.docker.version.is_some(),
            "docker version: {:?}",
            hb.docker
        );
        assert_eq!(
            hb.docker.containers.len(),
            1,
            "only this test's container is visible"
        );
        let c = &hb.docker.containers[0];
        assert_eq!(c.name, web);
        assert_eq!(c.image, img.v1);
        assert!(c.image_id.starts_with("sha256:"), "{}", c.image_id);
        assert_eq!(c.state, "running");
        assert_eq!(c.restart_count, 0);
        assert!(!c.oom_killed);
        assert_eq!(c.compose_project.as_deref(), Some("shop"));
        assert_eq!(c.compose_service.as_deref(), Some("web"));
        let summary = detail.agent.summary.expect("metrics summary");
        assert_eq!(summary.containers_running, 1);
        assert!(!detail.agent.agent_version.is_empty());
    }

    // Heartbeats keep coming: a newer one arrives within two intervals (plus scheduling slack).
    let first = api.agent(&a.id).await.agent.last_heartbeat_at.unwrap();
    eventually(
        Duration::from_secs(2 * TEST_HEARTBEAT_SECS + 3),
        "a newer heartbeat",
        || async {
            let t = api.agent(&a.id).await.agent.last_heartbeat_at?;
            (t > first).then_some(())
        },
    )
    .await;

    // Labels are the token's; selectors pick agents.
    let a_info = api.agent(&a.id).await.agent;
    assert_eq!(a_info.labels.get("tier").map(String::as_str), Some("build"));
    let build: Vec<AgentInfo> = api
        .get("/api/v1/agents?selector=tier%3Dbuild")
        .await
        .unwrap();
    assert_eq!(
        build.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        [a.id.as_str()]
    );
    let all: Vec<AgentInfo> = api.get("/api/v1/agents").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|x| x.status == AgentStatus::Online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_goes_offline_and_comes_back() {
    let scope = scope("off");
    let relay = Relay::start().await;
    let mut a = Agent::start(&relay, "host-a", "", &scope).await;
    let api = relay.api();
    api.wait_online(&a.id, DEADLINE).await;
    a.kill().await;
    api.wait_status(&a.id, AgentStatus::Offline, DEADLINE).await;
    a.run().await;
    api.wait_online(&a.id, DEADLINE).await;
}
