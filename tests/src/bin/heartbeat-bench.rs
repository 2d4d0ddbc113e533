//! heartbeat-bench: the agent CPU one heartbeat costs with N containers (issue 17 part 6: each
//! heartbeat lists and inspects every visible container and reads each running one's cgroup
//! for memory and CPU). A real relay (heartbeat every second), a real agent, N real containers
//! of the test image on the engine; the agent's CPU time over a fixed window divided by the
//! heartbeats it sent in it, once with no container and once with N.
//!
//! Usage: `cargo build --workspace --bins && target/debug/heartbeat-bench [N]` (default 50;
//! the binaries of the same profile are used).

use anyhow::{Context, Result};
use flotilla_tests::harness::{eventually, scope, Agent, Containers, Relay};
use flotilla_tests::procfs::{cpu_ticks, rss_kib};
use std::time::Duration;

/// The window each figure is measured over.
const WINDOW: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(50);
    let images =
        tokio::task::spawn_blocking(flotilla_tests::fixtures::ensure_test_images).await??;
    println!(
        "heartbeat-bench: {n} containers, heartbeat every {} s, binaries from {}",
        flotilla_tests::harness::TEST_HEARTBEAT_SECS,
        flotilla_tests::harness::bin_dir().display()
    );
    let relay = Relay::start_with_env(&[("FLOTILLA_LOG", "warn")]).await;
    let api = relay.api();
    let scope = scope("hbbench");
    let containers = Containers::new(&scope).await;
    let mut agent = Agent::enroll(&relay, "hb-bench", "", &scope).await;
    agent.set_env("FLOTILLA_LOG", "warn");
    agent.run().await;
    api.wait_online(&agent.id, Duration::from_secs(30)).await;
    let pid = agent.pid().context("agent pid")?;
    measure(pid, 0).await?;
    for i in 0..n {
        let body = bollard::models::ContainerCreateBody {
            image: Some(images.v1.clone()),
            host_config: Some(bollard::models::HostConfig {
                memory: Some(32 * 1024 * 1024),
                ..Default::default()
            }),
            ..Default::default()
        };
        containers.create(&format!("c{i}"), body, true).await;
    }
    eventually(
        Duration::from_secs(120),
        "a heartbeat with every container's figures",
        || async {
            let hb = api.agent(&agent.id).await.heartbeat?;
            let with = hb
                .docker
                .containers
                .iter()
                .filter(|c| {
                    c.resources
                        .as_ref()
                        .is_some_and(|r| r.cpu_percent.is_some())
                })
                .count();
            (with >= n).then_some(())
        },
    )
    .await;
    measure(pid, n).await?;
    Ok(())
}

/// Prints the agent's CPU per heartbeat over [`WINDOW`].
async fn measure(pid: u32, containers: usize) -> Result<()> {
    let ticks0 = cpu_ticks(pid)?;
    flotilla_testkit::hold(WINDOW, "measuring CPU over a fixed window of heartbeats").await;
    let ticks1 = cpu_ticks(pid)?;
    let cpu_ms = (ticks1 - ticks0) as f64 * 10.0; // USER_HZ = 100
    let heartbeats = WINDOW.as_secs() / flotilla_tests::harness::TEST_HEARTBEAT_SECS;
    println!(
        "{containers} containers: agent CPU {cpu_ms:.0} ms over {} s = {:.1} ms per heartbeat \
         ({heartbeats} heartbeats, idle work included), RSS {:.1} MiB",
        WINDOW.as_secs(),
        cpu_ms / heartbeats as f64,
        rss_kib(pid)? as f64 / 1024.0
    );
    Ok(())
}
