//! Rollout persistence against real SQLite files: creation and conflicts, stage membership,
//! dispatch recorded atomically with its command, outcomes from results, a reopened database
//! resuming where it was, and no second dispatch of an agent.

use super::*;
use crate::model::rollouts::{ContainerDispatch, Progress, RolloutSpec, Transition};
use flotilla_shared::limit::Limit;
use flotilla_shared::rollout::{
    AgentOutcome, ContainerOutcome, FailureAction, RolloutAction, RolloutOrder, RolloutState,
    RolloutTarget, RolloutTransition, StagePhase,
};
use flotilla_shared::update::{ContainerUpdateArgs, HealthSpec, UpdateStrategy};

/// A database file in its own directory, removed on drop.
struct FileStore {
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn file_store() -> (FileStore, Store) {
    let dir = std::env::temp_dir().join(new_id("relay-rollouts-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.db");
    let store = Store::open(&path).await.unwrap();
    (FileStore { path, dir }, store)
}

fn spec(selector: &str, container: &str, stages: &str) -> RolloutSpec {
    RolloutSpec {
        name: "ghost".into(),
        selector: selector.parse().unwrap(),
        target: RolloutTarget::Container(container.into()),
        image: "reg.example/ghost:5.3".into(),
        stages: flotilla_shared::rollout::parse_stages(stages).unwrap(),
        order: RolloutOrder::NewestFirst,
        seed: 7,
        max_failures: Limit::Count(0),
        on_failure: FailureAction::Pause,
        parallelism: Limit::Count(1),
        health: HealthSpec::Auto,
        health_timeout_secs: None,
        stable_secs: None,
        strategy: UpdateStrategy::StopFirst,
        stage_timeout_secs: 3600,
        allow_drift: false,
    }
}

fn update_command(id: &str, agent_id: &str) -> NewCommand {
    let mut c = command(id, vec![(agent_id.to_string(), DeliveryState::Queued)], 600);
    c.command = Command::ContainerUpdate(ContainerUpdateArgs {
        container: "ghost".into(),
        image: "reg.example/ghost:5.3".into(),
        health: HealthSpec::Auto,
        health_timeout_secs: None,
        stable_secs: None,
        strategy: UpdateStrategy::StopFirst,
        allow_drift: false,
    });
    c
}

fn updated_result(command_id: &str) -> CommandResult {
    let report = serde_json::json!({
        "outcome": "updated", "container": "ghost", "image": "reg.example/ghost:5.3",
        "strategy": "stop-first", "health": "auto",
        "old_image": "reg.example/ghost:5.2",
        "old_image_digest": "reg.example/ghost@sha256:5252",
        "phase": "done", "timings": [], "old_stopped": true, "total_ms": 1000
    });
    CommandResult {
        command_id: command_id.into(),
        status: ResultStatus::Succeeded,
        output: Some(report),
        error: None,
        started_at: now(),
        finished_at: now(),
    }
}

/// The `ghost` container's update, last seen running `reg.example/ghost:5.1`.
fn ghost(command: NewCommand) -> ContainerDispatch {
    ContainerDispatch {
        name: "ghost".into(),
        old_image: Some("reg.example/ghost:5.1".into()),
        command: Some(command),
    }
}

/// Three agents labelled tier=build, enrolled one after the other (ag "a" first).
async fn three_agents(store: &Store) -> Vec<AgentRecord> {
    token(store, "secret-ro", 3600, 10, "tier=build").await;
    let mut out = Vec::new();
    for name in ["a", "b", "c"] {
        out.push(enroll_ok(store, "secret-ro", new_agent(name, "")).await);
        // Distinct enrollment times for the newest-first order.
        let t = now();
        while now() == t {
            std::hint::spin_loop();
        }
    }
    out
}

#[tokio::test]
async fn create_dispatch_atomically_reload_and_never_dispatch_twice() {
    let (db, store) = file_store().await;
    let agents = three_agents(&store).await;
    let id = "ro_test1".to_string();
    assert_eq!(
        store
            .create_rollout(
                id.clone(),
                spec("tier=build", "ghost", "34%:1h,100%"),
                "ops".into()
            )
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(store.active_rollouts().await.unwrap(), vec![id.clone()]);
    let row = store.rollout_row(id.clone()).await.unwrap().unwrap();
    assert_eq!(row.progress.state, RolloutState::Running);
    assert_eq!(row.progress.stage_started_at, None);

    // Stage 1: 34 % of 3 = 2 agents, newest first.
    let n = store
        .start_rollout_stage(id.clone(), row.progress.clone(), now())
        .await
        .unwrap();
    assert_eq!(n, 2);
    // A second start of the same stage does nothing.
    assert_eq!(
        store
            .start_rollout_stage(id.clone(), row.progress.clone(), now())
            .await
            .unwrap(),
        0
    );
    let view = store.rollout_stage(id.clone(), 0).await.unwrap();
    assert_eq!(view.members, 2);
    assert_eq!(
        view.pending_agents,
        vec![agents[2].id.clone(), agents[1].id.clone()]
    );

    // Dispatch the first member: the command and its id are stored together.
    let newest = agents[2].id.clone();
    let cmd = update_command("cmd_ro_1", &newest);
    assert!(store
        .dispatch_rollout_agent(id.clone(), newest.clone(), None, vec![ghost(cmd.clone())])
        .await
        .unwrap());
    assert_eq!(
        state_of(&store, "cmd_ro_1", &newest).await,
        DeliveryState::Queued
    );
    assert_eq!(
        store
            .is_updating(newest.clone(), "ghost".into())
            .await
            .unwrap()
            .as_deref(),
        Some("cmd_ro_1")
    );
    // Dispatching it again is refused and writes nothing (no second command).
    let again = update_command("cmd_ro_2", &newest);
    assert!(!store
        .dispatch_rollout_agent(id.clone(), newest.clone(), None, vec![ghost(again)])
        .await
        .unwrap());
    assert!(matches!(
        store.command_info("cmd_ro_2".into(), None).await.unwrap(),
        CommandLookup::NotFound
    ));

    // A relay restart: reopen the file; the rollout is where it was.
    drop(store);
    let store = Store::open(&db.path).await.unwrap();
    let row2 = store.rollout_row(id.clone()).await.unwrap().unwrap();
    assert!(row2.progress.stage_started_at.is_some());
    let info = store.rollout(id.clone()).await.unwrap().unwrap();
    assert_eq!(info.counts.updating, 1);
    assert_eq!(info.counts.pending, 1);
    let member = info.agents.iter().find(|a| a.agent_id == newest).unwrap();
    assert_eq!(member.outcome, AgentOutcome::Updating);
    assert_eq!(member.containers[0].command_id, "cmd_ro_1");
    assert!(!store
        .dispatch_rollout_agent(
            id.clone(),
            newest.clone(),
            None,
            vec![ghost(update_command("cmd_ro_3", &newest))]
        )
        .await
        .unwrap());

    // The result arrives: the container and the agent are updated, old image kept for revert.
    store
        .record_result(newest.clone(), updated_result("cmd_ro_1"))
        .await
        .unwrap();
    assert!(store
        .refresh_rollout(id.clone(), now())
        .await
        .unwrap()
        .is_empty());
    let info = store.rollout(id.clone()).await.unwrap().unwrap();
    let member = info.agents.iter().find(|a| a.agent_id == newest).unwrap();
    assert_eq!(member.outcome, AgentOutcome::Updated);
    assert_eq!(member.containers[0].outcome, ContainerOutcome::Updated);
    assert_eq!(
        member.containers[0].old_image.as_deref(),
        Some("reg.example/ghost@sha256:5252")
    );
    assert!(member.finished_at.is_some());
    let view = store.rollout_stage(id.clone(), 0).await.unwrap();
    assert_eq!(view.updated.len(), 1);
    assert_eq!(view.in_flight, 0);
    assert_eq!(info.events[0].action, "created");
    assert_eq!(info.events[1].action, "stage_started");
}

// --- compose (issue 17, part 1) ---
#[tokio::test]
async fn an_allow_drift_rollout_sends_it_and_records_the_drift_as_the_reason() {
    let (_db, store) = file_store().await;
    let agents = three_agents(&store).await;
    let id = "ro_drift".to_string();
    let mut spec = spec("tier=build", "ghost", "100%");
    spec.allow_drift = true;
    // The members' update commands carry it (the spec survives the store's JSON).
    assert!(spec.update_args("ghost", "x:2").allow_drift);
    store
        .create_rollout(id.clone(), spec, "ops".into())
        .await
        .unwrap()
        .unwrap();
    let row = store.rollout_row(id.clone()).await.unwrap().unwrap();
    assert!(row.spec.allow_drift);
    assert!(
        store
            .rollout(id.clone())
            .await
            .unwrap()
            .unwrap()
            .allow_drift
    );
    store
        .start_rollout_stage(id.clone(), row.progress.clone(), now())
        .await
        .unwrap();
    let agent = agents[2].id.clone();
    let mut cmd = update_command("cmd_ro_d1", &agent);
    cmd.command = Command::ContainerUpdate(row.spec.update_args("ghost", &row.spec.image));
    assert!(store
        .dispatch_rollout_agent(id.clone(), agent.clone(), None, vec![ghost(cmd)])
        .await
        .unwrap());
    let mut result = updated_result("cmd_ro_d1");
    result.output.as_mut().unwrap()["compose"] = serde_json::json!({
        "project": "shop", "service": "ghost",
        "drift": "/srv/shop is not under [compose] allowed_dirs"
    });
    store.record_result(agent.clone(), result).await.unwrap();
    store.refresh_rollout(id.clone(), now()).await.unwrap();
    let info = store.rollout(id.clone()).await.unwrap().unwrap();
    let member = info.agents.iter().find(|a| a.agent_id == agent).unwrap();
    assert_eq!(member.outcome, AgentOutcome::Updated);
    assert_eq!(member.containers[0].outcome, ContainerOutcome::Updated);
    assert_eq!(
        member.containers[0].reason.as_deref(),
        Some("compose drift: /srv/shop is not under [compose] allowed_dirs")
    );
}

#[tokio::test]
async fn conflicts_need_same_target_and_overlapping_selectors() {
    let (_db, store) = file_store().await;
    three_agents(&store).await;
    let create = |id: &str, sel: &str, container: &str| {
        let store = store.clone();
        let (id, sel, container) = (id.to_string(), sel.to_string(), container.to_string());
        async move {
            store
                .create_rollout(id, spec(&sel, &container, "100%"), "ops".into())
                .await
                .unwrap()
        }
    };
    assert_eq!(create("ro_1", "tier=build", "ghost").await, Ok(()));
    // Same target, overlapping selector: refused, naming the other.
    assert_eq!(
        create("ro_2", "tier", "ghost").await,
        Err(("ro_1".into(), "ghost".into()))
    );
    // Another container: fine.
    assert_eq!(create("ro_3", "tier=build", "nginx").await, Ok(()));
    // Provably disjoint selectors: fine.
    assert_eq!(create("ro_4", "tier=web", "ghost").await, Ok(()));
    // Not provably disjoint on paper, and an enrolled agent matches both: refused.
    assert_eq!(
        create("ro_5", "!gpu", "nginx").await,
        Err(("ro_3".into(), "ghost".into()))
    );
    // Once the first is aborted, its target is free again.
    assert_eq!(
        store
            .rollout_action(
                "ro_1".into(),
                RolloutAction::Abort { revert: false },
                "ops".into()
            )
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(create("ro_6", "tier=build", "ghost").await, Ok(()));
    let listed = store
        .rollouts(crate::model::rollouts::RolloutFilter {
            state: Some(RolloutState::Aborted),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].agents.is_empty());
}

#[tokio::test]
async fn actions_and_progress_are_guarded() {
    let (_db, store) = file_store().await;
    three_agents(&store).await;
    store
        .create_rollout(
            "ro_a".into(),
            spec("tier=build", "ghost", "100%"),
            "ops".into(),
        )
        .await
        .unwrap()
        .unwrap();
    let refused = store
        .rollout_action("ro_a".into(), RolloutAction::Promote, "ops".into())
        .await
        .unwrap();
    assert!(matches!(
        refused,
        Err(crate::model::rollouts::ActionRefusal::InvalidState(ref why)) if why.contains("dispatching")
    ));
    assert_eq!(
        store
            .rollout_action("ro_x".into(), RolloutAction::Resume, "ops".into())
            .await
            .unwrap(),
        Err(crate::model::rollouts::ActionRefusal::NotFound)
    );
    let row = store.rollout_row("ro_a".into()).await.unwrap().unwrap();
    store
        .start_rollout_stage("ro_a".into(), row.progress.clone(), now())
        .await
        .unwrap();
    let row = store.rollout_row("ro_a".into()).await.unwrap().unwrap();
    // A stale writer (expected updated_at no longer current) changes nothing.
    let mut soaking: Progress = row.progress.clone();
    soaking.phase = StagePhase::Soaking;
    soaking.updated_at = now();
    let t = Transition {
        action: RolloutTransition::SoakStarted,
        detail: String::new(),
    };
    assert!(!store
        .set_rollout_progress(
            "ro_a".into(),
            row.created_at - chrono::Duration::seconds(5),
            soaking.clone(),
            t.clone(),
            "relay".into()
        )
        .await
        .unwrap());
    assert!(store
        .set_rollout_progress(
            "ro_a".into(),
            row.progress.updated_at,
            soaking,
            t,
            "relay".into()
        )
        .await
        .unwrap());
    // Abort skips the pending members and records who did it.
    store
        .rollout_action(
            "ro_a".into(),
            RolloutAction::Abort { revert: false },
            "alice".into(),
        )
        .await
        .unwrap()
        .unwrap();
    let info = store.rollout("ro_a".into()).await.unwrap().unwrap();
    assert_eq!(info.state, RolloutState::Aborted);
    assert_eq!(info.counts.skipped, 3);
    let last = info.events.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("aborted", "alice")
    );
    assert!(store.active_rollouts().await.unwrap().is_empty());
}

/// A rollout of `ghost` over the three agents in one 100 % stage, started.
async fn started(store: &Store, id: &str, on_failure: FailureAction) -> Vec<AgentRecord> {
    let agents = three_agents(store).await;
    let mut s = spec("tier=build", "ghost", "100%");
    s.on_failure = on_failure;
    store
        .create_rollout(id.into(), s, "ops".into())
        .await
        .unwrap()
        .unwrap();
    let row = store.rollout_row(id.into()).await.unwrap().unwrap();
    assert_eq!(
        store
            .start_rollout_stage(id.into(), row.progress, now())
            .await
            .unwrap(),
        3
    );
    agents
}

fn member(info: &flotilla_shared::rollout::RolloutInfo, agent: &str) -> AgentOutcome {
    info.agents
        .iter()
        .find(|a| a.agent_id == agent)
        .unwrap()
        .outcome
}

#[tokio::test]
async fn late_results_reclassify_and_maybe_updated_containers_are_reverted() {
    let (_db, store) = file_store().await;
    let agents = started(&store, "ro_late", FailureAction::Revert).await;
    let a = agents[2].id.clone();
    // Dispatched, accepted by the agent, then no result in time: failed no_result.
    let mut cmd = update_command("cmd_ro_late", &a);
    cmd.expires_at = now() - chrono::Duration::seconds(1);
    assert!(store
        .dispatch_rollout_agent("ro_late".into(), a.clone(), None, vec![ghost(cmd)])
        .await
        .unwrap());
    store
        .mark_sent("cmd_ro_late".into(), vec![a.clone()])
        .await
        .unwrap();
    assert!(store
        .mark_received("cmd_ro_late".into(), a.clone())
        .await
        .unwrap());
    store
        .expire_deliveries(now(), std::time::Duration::ZERO)
        .await
        .unwrap();
    store
        .refresh_rollout("ro_late".into(), now())
        .await
        .unwrap();
    let info = store.rollout("ro_late".into()).await.unwrap().unwrap();
    assert_eq!(member(&info, &a), AgentOutcome::Failed);
    // Reverting: the container whose update may have happened is in the plan, with the image
    // seen at dispatch.
    store
        .rollout_action(
            "ro_late".into(),
            RolloutAction::Abort { revert: true },
            "ops".into(),
        )
        .await
        .unwrap()
        .unwrap();
    let plan = store.rollout_revert_plan("ro_late".into()).await.unwrap();
    assert_eq!(
        plan.to_revert,
        vec![(
            a.clone(),
            "ghost".to_string(),
            Some("reg.example/ghost:5.1".to_string())
        )]
    );
    // The agent's real result arrives late: the container and the agent are updated now, and
    // the old image is the report's digest.
    store
        .record_result(a.clone(), updated_result("cmd_ro_late"))
        .await
        .unwrap();
    store
        .refresh_rollout("ro_late".into(), now())
        .await
        .unwrap();
    let info = store.rollout("ro_late".into()).await.unwrap().unwrap();
    assert_eq!(member(&info, &a), AgentOutcome::Updated);
    let c = &info
        .agents
        .iter()
        .find(|x| x.agent_id == a)
        .unwrap()
        .containers[0];
    assert_eq!(c.outcome, ContainerOutcome::Updated);
    assert_eq!(
        c.old_image.as_deref(),
        Some("reg.example/ghost@sha256:5252")
    );
    // Refreshing again changes nothing (classified once per delivery change).
    store
        .refresh_rollout("ro_late".into(), now())
        .await
        .unwrap();
    let again = store.rollout("ro_late".into()).await.unwrap().unwrap();
    assert_eq!(again.events.len(), info.events.len());
    let plan = store.rollout_revert_plan("ro_late".into()).await.unwrap();
    assert_eq!(plan.to_revert.len(), 1);
    // An offline agent past the revert deadline: revert_failed "agent offline".
    assert!(store
        .revert_rollout_container(
            "ro_late".into(),
            a.clone(),
            "ghost".into(),
            None,
            "agent offline".into()
        )
        .await
        .unwrap());
    let info = store.rollout("ro_late".into()).await.unwrap().unwrap();
    let m = info.agents.iter().find(|x| x.agent_id == a).unwrap();
    assert_eq!(m.outcome, AgentOutcome::RevertFailed);
    assert_eq!(m.containers[0].reason.as_deref(), Some("agent offline"));
}

#[tokio::test]
async fn deadline_only_ends_offline_members_and_writes_are_guarded_by_state() {
    let (_db, store) = file_store().await;
    let agents = started(&store, "ro_dl", FailureAction::Pause).await;
    let (a, b, c) = (
        agents[0].id.clone(),
        agents[1].id.clone(),
        agents[2].id.clone(),
    );
    // Only the offline member ends undelivered; the connected ones stay pending.
    assert_eq!(
        store
            .rollout_stage_deadline("ro_dl".into(), 0, vec![a.clone()])
            .await
            .unwrap(),
        1
    );
    let info = store.rollout("ro_dl".into()).await.unwrap().unwrap();
    assert_eq!(member(&info, &a), AgentOutcome::Undelivered);
    assert_eq!(member(&info, &b), AgentOutcome::Pending);
    // A deadline for another stage writes nothing.
    assert_eq!(
        store
            .rollout_stage_deadline("ro_dl".into(), 1, vec![b.clone()])
            .await
            .unwrap(),
        0
    );
    // After an operator's pause, neither dispatch nor deadline writes anything.
    store
        .rollout_action(
            "ro_dl".into(),
            RolloutAction::Pause { reason: None },
            "ops".into(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!store
        .dispatch_rollout_agent(
            "ro_dl".into(),
            b.clone(),
            None,
            vec![ghost(update_command("cmd_ro_p", &b))]
        )
        .await
        .unwrap());
    assert!(matches!(
        store.command_info("cmd_ro_p".into(), None).await.unwrap(),
        CommandLookup::NotFound
    ));
    assert_eq!(
        store
            .rollout_stage_deadline("ro_dl".into(), 0, vec![b.clone()])
            .await
            .unwrap(),
        0
    );
    // Resumed: dispatch works again.
    store
        .rollout_action("ro_dl".into(), RolloutAction::Resume, "ops".into())
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .dispatch_rollout_agent(
            "ro_dl".into(),
            c.clone(),
            None,
            vec![ghost(update_command("cmd_ro_c", &c))]
        )
        .await
        .unwrap());
    // Aborted without revert while c's update is in flight: still active (refreshed, and a
    // conflict for a new rollout of the same target) until its result is recorded.
    store
        .rollout_action(
            "ro_dl".into(),
            RolloutAction::Abort { revert: false },
            "ops".into(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.active_rollouts().await.unwrap(),
        vec!["ro_dl".to_string()]
    );
    assert_eq!(
        store
            .create_rollout(
                "ro_dl2".into(),
                spec("tier=build", "ghost", "100%"),
                "ops".into()
            )
            .await
            .unwrap(),
        Err(("ro_dl".into(), "ghost".into()))
    );
    store
        .record_result(c.clone(), updated_result("cmd_ro_c"))
        .await
        .unwrap();
    store.refresh_rollout("ro_dl".into(), now()).await.unwrap();
    let info = store.rollout("ro_dl".into()).await.unwrap().unwrap();
    assert_eq!(member(&info, &c), AgentOutcome::Updated);
    assert_eq!(info.counts.updated, 1);
    assert!(store.active_rollouts().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_name_target_conflicts_with_a_label_target() {
    let (_db, store) = file_store().await;
    three_agents(&store).await;
    store
        .create_rollout(
            "ro_n".into(),
            spec("tier=build", "ghost", "100%"),
            "ops".into(),
        )
        .await
        .unwrap()
        .unwrap();
    let mut label = spec("tier=build", "ghost", "100%");
    label.target = RolloutTarget::Label {
        key: "com.docker.compose.service".into(),
        value: "ghost".into(),
    };
    assert_eq!(
        store
            .create_rollout("ro_l".into(), label.clone(), "ops".into())
            .await
            .unwrap(),
        Err(("ro_n".into(), "ghost".into()))
    );
    // Provably disjoint selectors never conflict.
    label.selector = "tier=web".parse().unwrap();
    assert_eq!(
        store
            .create_rollout("ro_l2".into(), label, "ops".into())
            .await
            .unwrap(),
        Ok(())
    );
}

#[tokio::test]
async fn a_label_agent_updates_its_containers_one_at_a_time() {
    let (_db, store) = file_store().await;
    let agents = started(&store, "ro_one", FailureAction::Pause).await;
    let a = agents[2].id.clone();
    let list = command("cmd_ro_list", vec![(a.clone(), DeliveryState::Queued)], 600);
    assert!(store
        .dispatch_rollout_agent("ro_one".into(), a.clone(), Some(list), vec![])
        .await
        .unwrap());
    let first = ghost(update_command("cmd_ro_w1", &a));
    let second = ContainerDispatch {
        name: "worker".into(),
        old_image: Some("reg.example/worker:1".into()),
        command: None,
    };
    assert!(store
        .expand_rollout_agent("ro_one".into(), a.clone(), vec![first, second])
        .await
        .unwrap());
    let info = store.rollout("ro_one".into()).await.unwrap().unwrap();
    let m = info.agents.iter().find(|x| x.agent_id == a).unwrap();
    assert_eq!(m.containers[1].outcome, ContainerOutcome::Queued);
    assert_eq!(m.containers[1].command_id, "");
    // Nothing next while the first is in flight.
    assert!(store
        .next_rollout_containers("ro_one".into())
        .await
        .unwrap()
        .is_empty());
    assert!(!store
        .dispatch_rollout_container(
            "ro_one".into(),
            a.clone(),
            "worker".into(),
            update_command("cmd_ro_w2x", &a)
        )
        .await
        .unwrap());
    // The first finished: the agent is still updating, and the second goes next.
    store
        .record_result(a.clone(), updated_result("cmd_ro_w1"))
        .await
        .unwrap();
    store.refresh_rollout("ro_one".into(), now()).await.unwrap();
    let info = store.rollout("ro_one".into()).await.unwrap().unwrap();
    assert_eq!(member(&info, &a), AgentOutcome::Updating);
    assert_eq!(
        store
            .next_rollout_containers("ro_one".into())
            .await
            .unwrap(),
        vec![(a.clone(), "worker".to_string())]
    );
    assert!(store
        .dispatch_rollout_container(
            "ro_one".into(),
            a.clone(),
            "worker".into(),
            update_command("cmd_ro_w2", &a)
        )
        .await
        .unwrap());
    store
        .record_result(a.clone(), updated_result("cmd_ro_w2"))
        .await
        .unwrap();
    store.refresh_rollout("ro_one".into(), now()).await.unwrap();
    let info = store.rollout("ro_one".into()).await.unwrap().unwrap();
    assert_eq!(member(&info, &a), AgentOutcome::Updated);
}

/// Every outcome or state the rollout SQL compares against by hand is a spelling of the enum
/// it stands for, so renaming a variant's `as_str` cannot leave a guard that never matches.
/// (The rollout state and stage phase guards are spelled from the enums outright.)
#[test]
fn rollout_sql_names_only_outcomes_the_enums_know() {
    let sql = include_str!("../sql/rollouts.rs");
    let known = |v: &str| AgentOutcome::parse(v).is_some() || ContainerOutcome::parse(v).is_some();
    let mut checked = 0;
    for (i, _) in sql.match_indices("outcome ") {
        let rest = &sql[i + "outcome ".len()..];
        let list = if let Some(r) = rest.strip_prefix("= '") {
            &r[..r.find('\'').unwrap()]
        } else if let Some(r) = rest.strip_prefix("IN (") {
            &r[..r.find(')').unwrap()]
        } else {
            continue;
        };
        for v in list.split(',') {
            let v = v.trim().trim_matches('\'');
            if v.starts_with('?') || v.starts_with('{') {
                continue;
            }
            assert!(
                known(v),
                "rollout SQL compares an outcome with unknown {v:?}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "the scan found only {checked} outcome literals"
    );
    for guard in ["state = '", "stage_phase = '"] {
        for (i, _) in sql.match_indices(guard) {
            let v = &sql[i + guard.len()..];
            assert!(
                v.starts_with('{'),
                "a rollout state guard is written by hand: {:?}",
                &v[..v.find('\'').unwrap()]
            );
        }
    }
}
