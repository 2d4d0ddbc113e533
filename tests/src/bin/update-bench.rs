//! update-bench: the `container.update` figures BENCHMARKS.md reports, measured on real
//! processes: a relay, a real agent, the real Docker engine and a real local registry.
//!
//! - N healthy updates (v1 → v2 → v1 ..., health `running`, stability window S s): per update the
//!   agent's total and every phase from the report's `timings`, the agent's own overhead =
//!   total − (pull + start + health + stable), the part of it outside any phase, and the wall
//!   clock seen by the API client;
//! - M failed updates (to `v2-unhealthy`, whose Docker HEALTHCHECK fails): the time from the
//!   failed health gate to the old container healthy again (the report's `rollback` timing plus
//!   the old container's health check time, `rollback_health_evidence.check_ms`).
//!
//! The rollback's health gate is the update's own (`auto`): v1 has no HEALTHCHECK, so the
//! restored container is healthy again once it runs (the method is printed with the figures).
//!
//! Every figure comes from a real update's report or the wall clock; nothing is estimated.
//!
//! Usage: `cargo build --release --workspace --bins && target/release/update-bench [N] [M] [S]`
//! (defaults: 10 healthy updates, 5 failed ones, stability window 1 s).

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy};
use flotilla_shared::command::Command;
use flotilla_shared::update::{ContainerUpdateArgs, UpdateOutcome};
use flotilla_tests::fixtures;
use flotilla_tests::harness::{scope, update_args, Agent, Containers, Relay, UpdateResult};
use std::time::{Duration, Instant};

const REPO: &str = "flotilla-testapp";

fn arg(i: usize, default: u64, what: &str) -> Result<u64> {
    std::env::args()
        .nth(i)
        .map(|s| s.parse())
        .transpose()
        .with_context(|| format!("{what} must be a number"))
        .map(|v| v.unwrap_or(default))
}

#[tokio::main]
async fn main() -> Result<()> {
    let n = arg(1, 10, "N")? as usize;
    let m = arg(2, 5, "M")? as usize;
    let stable = arg(3, 1, "S")? as u32;
    if n == 0 {
        bail!("N must be at least 1");
    }
    println!(
        "update-bench: {n} healthy updates, {m} failed ones, stability window {stable} s, \
         binaries from {}",
        flotilla_tests::harness::bin_dir().display()
    );

    let (registry, refs) = tokio::task::spawn_blocking(|| -> Result<_> {
        let images = fixtures::ensure_test_images()?;
        let registry = fixtures::start_registry()?;
        let v1 = registry.push(&images.v1, &format!("{REPO}:v1"))?;
        let v2 = registry.push_remote_only(&images.v2, &format!("{REPO}:v2"))?;
        let bad =
            registry.push_remote_only(&images.v2_unhealthy, &format!("{REPO}:v2-unhealthy"))?;
        Ok((registry, [v1, v2, bad]))
    })
    .await??;
    let [v1, v2, unhealthy] = refs;
    println!("registry {} holds v1, v2 and v2-unhealthy", registry.host());

    let relay = Relay::start_with_env(&[("FLOTILLA_LOG", "warn")]).await;
    let scope = scope("update-bench");
    let docker = Containers::new(&scope).await;
    let mut agent = Agent::enroll(&relay, "bench-host", "", &scope).await;
    agent.set_env("FLOTILLA_LOG", "warn");
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, Duration::from_secs(30)).await;

    let web = docker
        .create(
            "web",
            ContainerCreateBody {
                image: Some(v1.clone()),
                host_config: Some(HostConfig {
                    restart_policy: Some(RestartPolicy {
                        name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;

    let run = |args: ContainerUpdateArgs| {
        let api = api.clone();
        let agent = agent.id.clone();
        async move {
            let t = Instant::now();
            let info = api
                .command(&agent, Command::ContainerUpdate(args), Some(300))
                .await?;
            let info = if info.state.is_final() {
                info
            } else {
                api.wait_final(&info.id, Duration::from_secs(300)).await
            };
            anyhow::Ok((UpdateResult::from_info(info), t.elapsed()))
        }
    };

    // === healthy updates ===
    // overhead = total − (pull + start + health + stable): the agent's time plus the engine
    // calls it makes (stop the old container, create the new one, remove the old one);
    // between = total − Σ all phase timings: the agent's bookkeeping between phases alone
    // (journal writes, events, inspects).
    let names = [
        "wall", "total", "pull", "stop", "create", "start", "health", "stable", "commit",
        "overhead", "between",
    ];
    let mut rows: Vec<Vec<f64>> = Vec::new();
    println!("\nhealthy updates (health running, stable {stable} s), ms:");
    print!("{:>3}", "#");
    for name in names {
        print!(" {name:>8}");
    }
    println!();
    for i in 0..n {
        let target = if i % 2 == 0 { &v2 } else { &v1 };
        let (r, wall) = run(update_args(&web, target, "running", stable)).await?;
        if r.report.outcome != UpdateOutcome::Updated {
            bail!(
                "healthy update {i} ended {}: {:#?}",
                r.report.outcome,
                r.report
            );
        }
        let t = |p: &str| r.timing_ms(p).unwrap_or(0) as f64;
        let total = r.report.total_ms as f64;
        let overhead = total - (t("pull") + t("start") + t("health") + t("stable"));
        let between = total - r.report.timings.iter().map(|p| p.ms as f64).sum::<f64>();
        let row = vec![
            wall.as_secs_f64() * 1000.0,
            total,
            t("pull"),
            t("stop_old"),
            t("create"),
            t("start"),
            t("health"),
            t("stable"),
            t("commit"),
            overhead,
            between,
        ];
        print!("{i:>3}");
        for v in &row {
            print!(" {v:>8.0}");
        }
        println!();
        rows.push(row);
    }
    for (col, name) in names.iter().enumerate() {
        let (min, med, max) = spread(rows.iter().map(|r| r[col]).collect());
        println!("{name:>9}: min {min:.0} ms, median {med:.0} ms, max {max:.0} ms");
    }

    // === failed updates: time back to a healthy old container ===
    if m > 0 {
        // The container runs v1 or v2 after the healthy runs; the failures roll back to it.
        let mut back = Vec::new();
        let mut methods = Vec::new();
        println!(
            "\nfailed updates (to v2-unhealthy, health auto = its Docker HEALTHCHECK), ms:\n{:>3} {:>8} {:>12} {:>9} {:>14} {:>10} {:>18}",
            "#", "wall", "failed gate", "rollback", "old check", "old stable", "gate→old healthy"
        );
        for i in 0..m {
            let (r, wall) = run(update_args(&web, &unhealthy, "auto", stable)).await?;
            if r.report.outcome != UpdateOutcome::RolledBack {
                bail!(
                    "failed update {i} ended {}: {:#?}",
                    r.report.outcome,
                    r.report
                );
            }
            let gate = r.report.health_evidence.as_ref().map_or(0, |e| e.check_ms) as f64;
            let old = r
                .report
                .rollback_health_evidence
                .as_ref()
                .context("a rolled back report has the old container's health evidence")?;
            let rollback = r.timing_ms("rollback").unwrap_or(0) as f64;
            let healthy_again = rollback + old.check_ms as f64;
            println!(
                "{i:>3} {:>8.0} {gate:>12.0} {rollback:>9.0} {:>14.0} {:>10.0} {healthy_again:>18.0}",
                wall.as_secs_f64() * 1000.0,
                old.check_ms,
                old.stable_ms
            );
            back.push(healthy_again);
            methods.push(old.method.clone());
        }
        methods.sort();
        methods.dedup();
        let (min, med, max) = spread(back);
        println!(
            "failed health gate → old container healthy again (rollback + its {} check): \
             min {min:.0} ms, median {med:.0} ms, max {max:.0} ms",
            methods.join("/")
        );
    }
    drop(agent);
    drop(docker);
    drop(registry);
    Ok(())
}

/// Min, median and max.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (v[0], med, v[v.len() - 1])
}
