//! fleet-bench: prints the figures BENCHMARKS.md reports, measured on real processes.
//!
//! - relay memory per agent connection and broadcast time, with N scripted agents
//!   (real enrollment, real challenge/response, real websockets on loopback);
//! - command round trip through relay and a real agent (ping, `?wait`), p50/p95/max;
//! - a real agent's idle RSS and CPU use;
//! - time from a relay crash (SIGKILL) and restart until every real agent is back online.
//!
//! Usage: `cargo build --release --workspace --bins && target/release/fleet-bench [N]`
//! (N scripted connections, default 5000; raise `ulimit -n` above N + 100 first).

use anyhow::{bail, Context, Result};
use flotilla_shared::api::CreateJob;
use flotilla_shared::command::Command;
use flotilla_shared::protocol::RelayFrame;
use flotilla_shared::signing::SigningKey;
use flotilla_tests::harness::{eventually, scope, Agent, Relay};
use flotilla_tests::procfs::{cpu_ticks, relay_pid, rss_kib};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(5000);
    println!(
        "fleet-bench: {n} scripted connections, binaries from {}",
        flotilla_tests::harness::bin_dir().display()
    );
    let mut relay = Relay::start_with_env(&[
        ("FLOTILLA_ENROLL_RATE_PER_MINUTE", "100000000"),
        ("FLOTILLA_LOG", "warn"),
    ])
    .await;
    let relay_pid = relay_pid(&relay)?;

    // === real agents: round trip, idle RSS/CPU ===
    let scope = scope("bench");
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(Agent::start(&relay, &format!("real-{i}"), "kind=real", &scope).await);
    }
    let api = relay.api();
    for a in &agents {
        api.wait_online(&a.id, Duration::from_secs(30)).await;
    }
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let info = api
            .command(&agents[0].id, Command::Ping(Default::default()), Some(30))
            .await?;
        if !info.state.is_final() {
            bail!("ping did not finish: {info:?}");
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "command round trip (API → relay → agent → relay → API, ping, 200 runs): p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );

    let agent_pid = agents[0].pid().context("agent pid")?;
    let cpu0 = cpu_ticks(agent_pid)?;
    let idle = Duration::from_secs(20);
    flotilla_testkit::hold(idle, "measuring idle behaviour over a fixed window").await;
    let cpu1 = cpu_ticks(agent_pid)?;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    println!(
        "agent idle (heartbeat every {}s, {} containers visible): RSS {:.1} MiB, CPU {:.2}% of one core over {}s",
        flotilla_tests::harness::TEST_HEARTBEAT_SECS,
        api.agent(&agents[0].id)
            .await
            .heartbeat
            .map_or(0, |h| h.docker.containers.len()),
        rss_kib(agent_pid)? as f64 / 1024.0,
        (cpu1 - cpu0) as f64 / ticks_per_sec / idle.as_secs_f64() * 100.0,
        idle.as_secs()
    );

    // === scripted connections: memory per connection and broadcast ===
    let rss_before = rss_kib(relay_pid)?;
    let received = Arc::new(AtomicUsize::new(0));
    let all_received = Arc::new(AllReceived::default());
    let connected = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        // One token per agent, as operators hand them out.
        let token = relay.enrollment_token("kind=scripted").await;
        let (id, key) =
            flotilla_tests::sim::enroll(&http, &relay.url(), token, &format!("scripted-{i}"))
                .await?;
        let ws_url = relay.ws_url();
        let received = received.clone();
        let connected = connected.clone();
        let all_received = all_received.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                scripted_agent(&ws_url, &id, &key, &connected, &received, n, &all_received).await
            {
                eprintln!("scripted agent {id}: {e:#}");
            }
        }));
    }
    println!("enrolled {n} agents in {:.1}s", t.elapsed().as_secs_f64());
    eventually(
        Duration::from_secs(300),
        "all scripted agents connected",
        || async { (connected.load(Ordering::SeqCst) >= n).then_some(()) },
    )
    .await;
    println!(
        "{n} connections up {:.1}s after the first enrollment",
        t.elapsed().as_secs_f64()
    );
    // Let the relay settle (welcome, resend scan) before reading its RSS.
    flotilla_testkit::hold(
        Duration::from_secs(3),
        "the relay settles before its RSS is read",
    )
    .await;
    let rss_after = rss_kib(relay_pid)?;
    println!(
        "relay RSS: {:.1} MiB before, {:.1} MiB with {n} more connections → {:.1} KiB per connection",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64
    );

    let t = Instant::now();
    let job = api
        .job(&CreateJob {
            selector: "kind=scripted".parse().unwrap(),
            command: Command::Ping(Default::default()),
            max_concurrency: None,
            max_errors: None,
            ttl_secs: Some(120),
        })
        .await?;
    let created = t.elapsed();
    tokio::time::timeout(Duration::from_secs(120), all_received.notify.notified())
        .await
        .context("broadcast did not reach every agent")?;
    let last = *all_received.at.get().context("time of the last receipt")?;
    println!(
        "broadcast of one signed command to {} agents: last agent received it {:.0} ms after the request was sent; the API answered (with the {}-target job document) after {:.0} ms",
        job.counts.targets,
        last.duration_since(t).as_secs_f64() * 1000.0,
        job.counts.targets,
        created.as_secs_f64() * 1000.0
    );
    for t in tasks {
        t.abort();
    }

    // === relay crash and restart ===
    let t = Instant::now();
    relay.restart().await;
    let api = relay.api();
    for a in &agents {
        api.wait_online(&a.id, Duration::from_secs(120)).await;
    }
    println!(
        "relay SIGKILL + restart → all {} real agents back online in {:.2}s",
        agents.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// When the last scripted agent received the broadcast.
#[derive(Default)]
struct AllReceived {
    at: OnceLock<Instant>,
    notify: Notify,
}

async fn scripted_agent(
    url: &str,
    id: &str,
    key: &SigningKey,
    connected: &AtomicUsize,
    received: &AtomicUsize,
    n: usize,
    all_received: &AllReceived,
) -> Result<()> {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        match serde_json::from_str::<RelayFrame>(text.as_str())? {
            RelayFrame::Hello { challenge, .. } => {
                let auth = flotilla_testkit::agent::auth_frame(key, id, &challenge, "bench");
                ws.send(Message::text(serde_json::to_string(&auth)?))
                    .await?;
            }
            RelayFrame::Welcome { .. } => {
                connected.fetch_add(1, Ordering::SeqCst);
            }
            RelayFrame::Command(_) if received.fetch_add(1, Ordering::SeqCst) + 1 == n => {
                let _ = all_received.at.set(Instant::now());
                all_received.notify.notify_one();
            }
            _ => {}
        }
    }
    Ok(())
}
