//! ingest-bench: what the relay's acknowledged-data durability costs on its ingest path
//! (issue 18 part 2). `A` scripted agents (real enrollment, real websockets on loopback) each
//! send `M` events through the agent outbox protocol, one at a time like a real agent's pump,
//! each waiting for the relay's ack, so every event is one store transaction committed before
//! its ack. Prints events per second over the whole run and the ack latency (p50, p95, max).
//!
//! Usage: `cargo build --release --workspace --bins && target/release/ingest-bench [A] [M]`
//! (default 20 agents × 200 events). The relay binary is the one beside this one; to measure
//! another build, copy both binaries into one directory and run from there.

use anyhow::{Context, Result};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use flotilla_tests::fake_agent;
use flotilla_tests::harness::Relay;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let agents: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("A (agents) must be a number")?
        .unwrap_or(20);
    let events: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("M (events per agent) must be a number")?
        .unwrap_or(200);
    println!(
        "ingest-bench: {agents} agents × {events} events, binaries from {}",
        flotilla_tests::harness::bin_dir().display()
    );
    let relay = Relay::start_with_env(&[
        ("FLOTILLA_ENROLL_RATE_PER_MINUTE", "100000000"),
        ("FLOTILLA_LOG", "warn"),
    ])
    .await;
    let mut connected = Vec::new();
    for i in 0..agents {
        connected.push(fake_agent::start(&relay, &format!("ingest-{i}"), "bench=ingest").await);
    }
    let started = Instant::now();
    let runs = connected.into_iter().map(|mut agent| {
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(events);
            for n in 0..events {
                let event = AgentEvent {
                    kind: EventKind::ContainerStarted,
                    at: chrono::Utc::now(),
                    container_id: Some(format!("c{n}")),
                    container_name: Some("app".into()),
                    message: format!("container app started ({n})"),
                    attributes: Default::default(),
                };
                let t = Instant::now();
                agent
                    .outbox(OutboxItem::Event(event), Duration::from_secs(30))
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        })
    });
    let mut all = Vec::with_capacity(agents * events);
    for run in futures_util::future::join_all(runs).await {
        all.extend(run.context("agent task")??);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} events acknowledged in {:.2}s: {:.0} events/s; ack latency p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        ms(pick(0.5)),
        ms(pick(0.95)),
        ms(*all.last().context("no events")?)
    );
    drop(relay);
    Ok(())
}
