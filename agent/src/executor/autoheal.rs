//! The executor's side of auto-heal (issue 17 part 6; the tracker is `crate::autoheal`): for
//! each container the tracker says is due, one inspect to read its `flotilla.autoheal` label
//! and confirm it is still running and unhealthy, then a restart under the container's lock
//! (so never during an update or restore of it; a backup of it is checked separately), marked
//! like an update's so its die/start events raise no alert of their own, and reported as a
//! `container.autoheal` event.

use super::Shared;
use crate::autoheal::{Autoheal, Candidate};
use crate::docker::ResolvedContainer;
use chrono::Utc;
use flotilla_shared::heartbeat::{AgentEvent, EventKind, Heartbeat};
use flotilla_shared::protocol::OutboxItem;
use flotilla_shared::upkeep::AUTOHEAL_LABEL;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Stop timeout of an auto-heal restart.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the restart's events still count as the restart's after it returned (the event
/// follower may see them a little later).
const EVENTS_GRACE: Duration = Duration::from_secs(5);
/// What container events raised during an auto-heal restart carry as `updating`.
pub const AUTOHEAL_MARK: &str = "autoheal";

/// Feeds one heartbeat to the tracker and restarts what is due (each restart on `tasks`).
pub(super) async fn step(
    shared: &Arc<Shared>,
    healer: &mut Autoheal,
    hb: &Heartbeat,
    tasks: &mut JoinSet<()>,
) {
    let now = Utc::now();
    for cand in healer.observe(&hb.docker.containers, now) {
        let c = ResolvedContainer {
            id: cand.id.clone(),
            name: cand.name.clone(),
        };
        let inspect = match shared.docker.inspect(&c).await {
            Ok(i) => i,
            Err(e) => {
                debug!(container = c.name, error = %e, "auto-heal: cannot inspect; skipped");
                continue;
            }
        };
        let label = inspect
            .pointer("/Config/Labels")
            .and_then(|l| l.get(AUTOHEAL_LABEL))
            .and_then(|v| v.as_str());
        if !healer.opted_in(label) {
            healer.not_opted_in(&cand);
            continue;
        }
        let running = inspect.pointer("/State/Running").and_then(|v| v.as_bool()) == Some(true)
            && inspect
                .pointer("/State/Restarting")
                .and_then(|v| v.as_bool())
                != Some(true);
        let unhealthy = inspect
            .pointer("/State/Health/Status")
            .and_then(|v| v.as_str())
            == Some("unhealthy");
        if !running || !unhealthy {
            continue;
        }
        if shared.backups.is_busy(&c.name, &c.id) {
            info!(
                container = c.name,
                "auto-heal: a backup of the container is running; not now"
            );
            continue;
        }
        let Some(guard) = shared.locks.try_lock(&c.name) else {
            info!(
                container = c.name,
                "auto-heal: another command holds the container; not now"
            );
            continue;
        };
        healer.restarted(&cand, now);
        let shared = shared.clone();
        tasks.spawn(async move {
            restart(&shared, &c, &cand, guard).await;
        });
    }
}

async fn restart(
    shared: &Shared,
    c: &ResolvedContainer,
    cand: &Candidate,
    guard: tokio::sync::OwnedMutexGuard<()>,
) {
    let unhealthy_secs = (Utc::now() - cand.unhealthy_since).num_seconds().max(0);
    shared.updater.updating.insert(&c.name, AUTOHEAL_MARK);
    let outcome = shared.docker.restart(c, RESTART_TIMEOUT).await;
    drop(guard);
    let mut attributes = BTreeMap::new();
    attributes.insert("unhealthy_secs".to_string(), unhealthy_secs.to_string());
    attributes.insert(
        "restarts_in_hour".to_string(),
        (cand.restarts_in_hour + 1).to_string(),
    );
    let message = match &outcome {
        Ok(_) => {
            attributes.insert("outcome".into(), "restarted".into());
            info!(
                container = c.name,
                unhealthy_secs, "auto-heal restarted an unhealthy container"
            );
            format!(
                "container {} was unhealthy for {unhealthy_secs} s; auto-heal restarted it \
                 (restart {} within the hour)",
                c.name,
                cand.restarts_in_hour + 1
            )
        }
        Err(e) => {
            attributes.insert("outcome".into(), "failed".into());
            attributes.insert("error".into(), e.to_string());
            warn!(container = c.name, error = %e, "auto-heal could not restart a container");
            format!(
                "container {} was unhealthy for {unhealthy_secs} s; auto-heal could not \
                 restart it: {e}",
                c.name
            )
        }
    };
    let event = AgentEvent {
        kind: EventKind::ContainerAutoheal,
        at: Utc::now(),
        container_id: Some(c.id.clone()),
        container_name: Some(c.name.clone()),
        message,
        attributes,
    };
    if let Err(e) = shared
        .state
        .append_outbox(vec![OutboxItem::Event(event)])
        .await
    {
        warn!(error = format!("{e:#}"), "cannot queue the auto-heal event");
    }
    shared.heartbeat_poke.notify_one();
    tokio::time::sleep(EVENTS_GRACE).await;
    // An update that started meanwhile has put its own mark there: that one stays.
    if shared.updater.updating.command_for(&c.name).as_deref() == Some(AUTOHEAL_MARK) {
        shared.updater.updating.remove(&c.name);
    }
}
