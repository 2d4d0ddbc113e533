//! flotilla-agent: the small process on every server of the fleet. It keeps one outbound,
//! authenticated websocket to the relay, reports heartbeats and Docker events, and runs the
//! relay's signed commands against the local Docker engine.
//!
//! `run` wires a handful of long-lived tasks that talk over channels: the session (websocket,
//! reconnects, outbox sending), the heartbeat builder, the Docker event follower and the command
//! executor. Everything durable — identity, command journal, outbox — lives in one SQLite file in
//! the state directory (`state`). Only `docker` talks to the Docker engine.
#![forbid(unsafe_code)]

mod agent_id;
// issue 17 part 6: restarting containers that stay unhealthy
pub mod autoheal;
pub mod backup;
pub mod certs;
pub mod compose;
pub mod config;
pub mod docker;
pub mod enroll;
pub mod events;
mod executor;
mod frame;
pub mod heartbeat;
// issue 17 part 6: image pruning
pub mod images;
mod session;
pub mod state;
mod transport;
mod update;
pub mod upgrade;
mod verify;

use anyhow::{anyhow, Context, Result};
use chrono::Utc;
use config::AgentConfig;
use flotilla_daemon::systemd;
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use flotilla_shared::signing::{PublicKey, SigningKey};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long tasks get to wind down after shutdown was requested.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the agent until `shutdown` is cancelled (or a task fails for good). The state directory
/// must hold an enrolled identity (see `enroll::enroll`).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    config.validate()?;
    let state = state::State::open(&config.state_dir).await?;
    state.set_max_outbox_events(config.max_outbox_events);
    let identity = state.identity().await?.ok_or_else(|| {
        anyhow!(
            "this agent is not enrolled: {} holds no identity; run `flotilla-agent enroll` first",
            state.path().display()
        )
    })?;
    // The root updater reads the id from this file, not from agent.db; an install enrolled
    // before the file existed gets it here. Without it only rollback upgrades are refused.
    match state.ensure_agent_id_file(&identity.agent_id).await {
        Ok(true) => info!(agent_id = identity.agent_id, "wrote the agent id file"),
        Ok(false) => {}
        Err(e) => warn!(
            error = format!("{e:#}"),
            "the root updater cannot learn this agent's id"
        ),
    }
    let key = SigningKey::from_pkcs8(&identity.pkcs8)
        .map_err(|e| anyhow!("the stored agent key is unusable: {e}"))?;
    let relay_key = PublicKey::from_base64(&identity.relay_public_key)
        .map_err(|e| anyhow!("the pinned relay key is unusable: {e}"))?;
    // `relay_url`, else the enrolled URL, then `relay_urls`: tried in turn by the session.
    let relays = transport::RelayRotation::new(
        &config.relay_list(&identity.relay_url),
        config.allow_insecure_ws,
    )?;
    let relay_url = relays.current().base.clone();
    let ws_url = relays.current().ws.clone();
    let tls = if relays.any_tls() {
        let ca = config.ca_file.clone();
        Some(
            tokio::task::spawn_blocking(move || transport::tls_config(ca.as_deref()))
                .await
                .context("tls setup task failed")??,
        )
    } else {
        None
    };

    // Self-update: downloads from the relay, request files for the root updater.
    let upgrades = upgrade::Upgrades::new(
        upgrade::UpgradeOptions {
            state_dir: config.state_dir.clone(),
            relay_url: relay_url.clone(),
            ca_file: config.ca_file.clone(),
            relay_key,
            settings: config.upgrade.settings(),
        },
        state.clone(),
    )?;

    // Housekeeping before anything new comes in.
    state.prune_journal(Utc::now()).await?;
    let interrupted = executor::fail_interrupted(&state, Some(&upgrades)).await?;
    if interrupted > 0 {
        warn!(
            count = interrupted,
            "reported commands interrupted by the previous stop as failed"
        );
    }
    // Labels from the last welcome (re-verified) serve until the relay sends a fresh one.
    let initial_welcome = state
        .last_welcome()
        .await?
        .and_then(|w| w.verify(&relay_key).ok())
        .filter(|b| b.agent_id == identity.agent_id);

    let (hostname, _, _) = tokio::task::spawn_blocking(heartbeat::host_facts)
        .await
        .context("host facts task failed")?;
    let docker = docker::DockerClient::new(
        config.docker_host.clone(),
        docker::Visibility::new(config.only_label_pair()),
    );

    let mut attributes = BTreeMap::new();
    attributes.insert(
        "version".to_string(),
        flotilla_shared::release::version().to_string(),
    );
    state
        .append_outbox(vec![OutboxItem::Event(AgentEvent {
            kind: EventKind::AgentStarted,
            at: Utc::now(),
            container_id: None,
            container_name: None,
            message: format!(
                "agent {} started (version {})",
                identity.name,
                flotilla_shared::release::version()
            ),
            attributes,
        })])
        .await?;

    // Channels between the tasks.
    let (heartbeat_tx, heartbeat_rx) = watch::channel(None);
    let (interval_tx, interval_rx) = watch::channel(heartbeat::DEFAULT_INTERVAL);
    let (welcome_tx, welcome_rx) = watch::channel(initial_welcome);
    // The upgrade task confirms a pending upgrade after the first welcome of this process.
    let upgrade_welcome = welcome_tx.subscribe();
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (control_tx, control_rx) = mpsc::channel(256);
    let poke = Arc::new(Notify::new());
    let frame_limit: frame::FrameLimit = Arc::new(AtomicUsize::new(config.max_frame_bytes));

    let tasks_token = shutdown.child_token();
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();

    let session = session::Session {
        state: state.clone(),
        agent_id: identity.agent_id.clone(),
        key,
        relay_key,
        relays,
        connected_relay: upgrades.relay_base(),
        tls,
        max_frame_bytes: config.max_frame_bytes,
        frame_limit: frame_limit.clone(),
        hold_outbox: config.test_hold_outbox,
        heartbeats: heartbeat_rx,
        heartbeat_interval: interval_tx,
        heartbeat_poke: poke.clone(),
        welcome: welcome_tx,
        commands: commands_tx,
        control: control_rx,
    };
    let token = tasks_token.clone();
    tasks.spawn(async move { ("session", session.run(token).await) });
    let token = tasks_token.clone();
    let upgrade_task = upgrades.clone();
    tasks.spawn(async move { ("upgrade", upgrade_task.run(upgrade_welcome, token).await) });

    // Reads credential and recipient files: on the blocking pool.
    let backups = {
        let (backup_config, docker, state) = (config.backup.clone(), docker.clone(), state.clone());
        let (state_dir, agent_id, name) = (
            config.state_dir.clone(),
            identity.agent_id.clone(),
            identity.name.clone(),
        );
        tokio::task::spawn_blocking(move || {
            backup::Backups::new(backup_config, docker, state, &state_dir, &agent_id, &name)
        })
        .await
        .context("backup setup task failed")??
    };
    backups.prepare(true).await?;
    backups.prune_catalogue().await;
    let scheduler = backups.clone();
    let token = tasks_token.clone();
    tasks.spawn(async move { ("backup scheduler", scheduler.scheduler(token).await) });
    let watcher = backups.clone();
    let token = tasks_token.clone();
    tasks.spawn(async move { ("backup status watcher", watcher.watcher(token).await) });

    // issue 17 part 6: auto-heal reads the heartbeats; image pruning has its own schedule
    let heartbeats_for_autoheal = heartbeat_tx.subscribe();
    let images = images::Images {
        docker: docker.clone(),
        state: state.clone(),
        config: config.images.clone(),
        lock: Default::default(),
    };
    let pruner = images.clone();
    let token = tasks_token.clone();
    tasks.spawn(async move { ("image pruning", pruner.scheduler(token).await) });
    // issue 17 §2: certificates on the host, read at most every interval into heartbeats.
    let (certificates_tx, certificates_rx) = watch::channel(Vec::new());
    if certs::CertificateScanner::active(&config.certificates) {
        let scanner = certs::CertificateScanner {
            config: config.certificates.clone(),
            out: certificates_tx,
            poke: poke.clone(),
        };
        let token = tasks_token.clone();
        tasks.spawn(async move { ("certificates", scanner.run(token).await) });
    }

    let hb = heartbeat::HeartbeatTask {
        docker: docker.clone(),
        interval: interval_rx,
        poke: poke.clone(),
        out: heartbeat_tx,
        backup: backups.summary(),
        disk_paths: config.disk_paths.clone(),
        certificates: certificates_rx,
    };
    let token = tasks_token.clone();
    tasks.spawn(async move { ("heartbeat", hb.run(token).await) });

    let updating = update::Updating::default();
    let ev = events::EventsTask {
        docker: docker.clone(),
        state: state.clone(),
        updating: updating.clone(),
        restart_loop_threshold: config.restart_loop_threshold,
        restart_loop_window_secs: config.restart_loop_window_secs,
    };
    let token = tasks_token.clone();
    tasks.spawn(async move { ("events", ev.run(token).await) });

    let updater = update::Updater {
        docker: docker.clone(),
        state: state.clone(),
        config: config.update.clone(),
        pause_at: config.test_update_pause_at,
        state_dir: config.state_dir.clone(),
        updating,
        frame_limit: frame_limit.clone(),
        stopping: tasks_token.clone(),
        compose: config.compose.clone(),
        docker_host: config.docker_host.clone(),
    };
    let exec = executor::Executor {
        verifier: verify::Verifier {
            agent_id: identity.agent_id.clone(),
            relay_key,
            allowed: config.allowed_commands.iter().copied().collect(),
        },
        state: state.clone(),
        docker,
        welcome: welcome_rx,
        control_tx,
        frame_limit,
        hostname,
        heartbeat_poke: poke,
        updater,
        backups,
        upgrades,
        images,
        heartbeats: heartbeats_for_autoheal,
        autoheal: config.autoheal.clone(),
    };
    let token = tasks_token.clone();
    tasks.spawn(async move { ("executor", exec.run(commands_rx, token).await) });

    // Under systemd's watchdog: fed from this runtime's own timer, so a stuck event loop (the
    // agent runs on one thread) stops the pings and systemd restarts the agent.
    if let Some(interval) = systemd::watchdog_interval() {
        let token = tasks_token.clone();
        tasks.spawn(async move {
            systemd::run_watchdog(interval, || async { true }, token).await;
            ("systemd watchdog", Ok(()))
        });
    }

    info!(
        agent_id = identity.agent_id,
        name = identity.name,
        relay = ws_url,
        relays = config.relay_list(&identity.relay_url).len(),
        hold_outbox = config.test_hold_outbox,
        only_label = config.only_label.as_deref().unwrap_or(""),
        "agent running"
    );
    systemd::ready(&format!("running, relay {ws_url}")).await;

    let mut outcome = Ok(());
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => info!("shutting down"),
        // Tasks watch a child of `shutdown`, so one may finish first during a normal stop.
        Some(joined) = tasks.join_next(), if !shutdown.is_cancelled() => {
            outcome = Err(match joined {
                Ok((name, Ok(()))) => anyhow!("{name} task stopped unexpectedly"),
                Ok((name, Err(e))) => e.context(format!("{name} task failed")),
                Err(e) => anyhow!("agent task panicked: {e}"),
            });
            if shutdown.is_cancelled() {
                outcome = Ok(());
            } else if let Err(e) = &outcome {
                error!(error = format!("{e:#}"), "agent task ended; stopping");
            }
        }
    }
    systemd::stopping().await;
    tasks_token.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(e))) = joined {
                warn!(
                    task = name,
                    error = format!("{e:#}"),
                    "task failed while stopping"
                );
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("some tasks did not stop in time");
        tasks.abort_all();
    }
    outcome
}
