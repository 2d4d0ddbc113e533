//! rollout-bench: the rollout figures in BENCHMARKS.md, measured on a real relay process with N
//! simulated agents (tests/src/sim.rs: real enrollment, real websockets, the agent protocol;
//! no Docker behind them).
//!
//! 1. Relay CPU and RSS while one rollout updates the whole simulated fleet through three stages
//!    (`5%:5s,25%:5s,100%`, parallelism 10 %, each update taking 500 ms on the agent), compared
//!    with the relay idling with the same fleet connected for the same time.
//! 2. Time from a failing canary's verdict (the agent sending its rolled-back result, or the
//!    first heartbeat reporting the updated container unhealthy during the soak) to the rollout's
//!    `paused` transition, as recorded by the relay; several rounds of each.
//!
//! Usage: `cargo build --release --workspace --bins && target/release/rollout-bench [N]`
//! (default 1000; raise `ulimit -n` above N + 100 first).

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::rollout::{AbortRollout, CreateRollout, RolloutInfo, RolloutState};
use flotilla_tests::harness::{eventually, Api, Relay};
use flotilla_tests::procfs::{cpu_ticks, hwm_kib, relay_pid};
use flotilla_tests::sim::{self, SimConfig, SimStats, SIM_CONTAINER};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Heartbeat interval of the relay and of the simulated agents.
const HEARTBEAT_SECS: u64 = 10;

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(1000);
    println!(
        "rollout-bench: {n} simulated agents, binaries from {}",
        flotilla_tests::harness::bin_dir().display()
    );
    let relay = Relay::start_with_env(&[
        ("FLOTILLA_ENROLL_RATE_PER_MINUTE", "100000000"),
        (
            "FLOTILLA_HEARTBEAT_INTERVAL_SECS",
            &HEARTBEAT_SECS.to_string(),
        ),
        ("FLOTILLA_LOG", "warn,flotilla_relay_server::rollouts=info"),
    ])
    .await;
    let relay_pid = relay_pid(&relay)?;
    let api = relay.api();

    let config = Arc::new(SimConfig {
        update_ms: 500,
        heartbeat_every: Duration::from_secs(HEARTBEAT_SECS),
        ..SimConfig::default()
    });
    let stats = Arc::new(SimStats::default());
    let http = reqwest::Client::new();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let token = relay.enrollment_token("tier=sim").await;
        let (id, key) = sim::enroll(&http, &relay.url(), token, &format!("sim-{i:05}")).await?;
        tasks.push(tokio::spawn(sim::run(
            relay.ws_url(),
            id,
            key,
            config.clone(),
            stats.clone(),
        )));
    }
    eventually(Duration::from_secs(300), "all simulated agents connected", || {
        let stats = stats.clone();
        async move { (stats.connected.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(()) }
    })
    .await;
    println!(
        "{n} simulated agents enrolled and connected in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // Let the connection burst settle before measuring.
    flotilla_testkit::hold(
        Duration::from_secs(HEARTBEAT_SECS),
        "the connection burst settles before measuring",
    )
    .await;

    // === 1. a whole-fleet rollout ===
    let (cpu0, t0) = (cpu_ticks(relay_pid)?, Instant::now());
    let req = request("registry.local/app:v2", "5%:5s,25%:5s,100%", "10%");
    let ro: RolloutInfo = api.post("/api/v1/rollouts", &req).await?;
    let done = wait_final(&api, &ro.id, Duration::from_secs(900)).await?;
    let wall = t0.elapsed();
    let cpu = (cpu_ticks(relay_pid)? - cpu0) as f64 / 100.0;
    let rss_peak = hwm_kib(relay_pid)? as f64 / 1024.0;
    if done.state != RolloutState::Completed || done.counts.updated as usize != n {
        bail!(
            "rollout did not update every agent: {:?} {:?}",
            done.state,
            done.counts
        );
    }
    println!(
        "rollout of {n} agents (5%:5s, 25%:5s, 100%; parallelism 10%; 500 ms per update): {:.1}s wall, relay CPU {:.2}s = {:.1}% of one core on average; relay peak RSS {:.1} MiB",
        wall.as_secs_f64(),
        cpu,
        cpu / wall.as_secs_f64() * 100.0,
        rss_peak
    );
    let (cpu0, t0) = (cpu_ticks(relay_pid)?, Instant::now());
    flotilla_testkit::hold(wall, "measuring idle CPU over the same window").await;
    let idle = (cpu_ticks(relay_pid)? - cpu0) as f64 / 100.0;
    println!(
        "same relay idling with the {n} agents connected for {:.1}s: CPU {:.2}s = {:.1}% of one core",
        t0.elapsed().as_secs_f64(),
        idle,
        idle / t0.elapsed().as_secs_f64() * 100.0
    );

    // === 2. failing canary → pause ===
    for (kind, image, stages) in [
        (
            "rolled-back update",
            "registry.local/app:v3-bad",
            "1%:1s,100%",
        ),
        (
            "unhealthy during soak",
            "registry.local/app:v3-sick",
            "1%:120s,100%",
        ),
    ] {
        let mut lat = Vec::new();
        for round in 0..5 {
            let before = stats.verdicts.lock().unwrap().len();
            let req = request(&format!("{image}{round}"), stages, "1");
            let ro: RolloutInfo = api.post("/api/v1/rollouts", &req).await?;
            let paused = eventually(Duration::from_secs(120), "the rollout to pause", || {
                let api = api.clone();
                let id = ro.id.clone();
                async move {
                    let r: RolloutInfo = api.get(&format!("/api/v1/rollouts/{id}")).await.ok()?;
                    (r.state == RolloutState::Paused).then_some(r)
                }
            })
            .await;
            let verdict: DateTime<Utc> = stats
                .verdicts
                .lock()
                .unwrap()
                .get(before)
                .map(|(at, _)| *at)
                .with_context(|| {
                    format!(
                        "the rollout paused ({:?}; {:?}) but no failing verdict was recorded",
                        paused.reason,
                        paused
                            .agents
                            .iter()
                            .filter_map(|a| a.reason.as_deref())
                            .collect::<Vec<_>>()
                    )
                })?;
            let paused_at = paused
                .events
                .iter()
                .rev()
                .find(|e| e.action == "paused")
                .context("no paused event")?
                .at;
            lat.push((paused_at - verdict).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            let _: RolloutInfo = api
                .post(
                    &format!("/api/v1/rollouts/{}/abort", ro.id),
                    &AbortRollout { revert: true },
                )
                .await?;
            wait_final(&api, &ro.id, Duration::from_secs(120)).await?;
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "failing canary ({kind}) → rollout paused, {} rounds: median {:.0} ms, max {:.0} ms (verdict sent by the agent → relay's `paused` transition)",
            lat.len(),
            lat[lat.len() / 2],
            lat[lat.len() - 1]
        );
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn request(image: &str, stages: &str, parallelism: &str) -> CreateRollout {
    CreateRollout {
        name: None,
        selector: "tier=sim".parse().unwrap(),
        container: Some(SIM_CONTAINER.into()),
        container_label: None,
        image: image.into(),
        stages: Some(stages.into()),
        staging: None,
        order: None,
        max_failures: None,
        on_failure: None,
        parallelism: Some(parallelism.parse().unwrap()),
        health: None,
        health_timeout_secs: None,
        stable_secs: None,
        strategy: None,
        stage_timeout_secs: Some(60),
        allow_drift: false,
    }
}

async fn wait_final(api: &Api, id: &str, deadline: Duration) -> Result<RolloutInfo> {
    let r = eventually(deadline, "the rollout to finish", || {
        let api = api.clone();
        let id = id.to_string();
        async move {
            let r: RolloutInfo = api.get(&format!("/api/v1/rollouts/{id}")).await.ok()?;
            r.state.is_final().then_some(r)
        }
    })
    .await;
    Ok(r)
}
