//! Unit tests of the rollout engine's pure decisions.

use super::*;
use crate::config::RelayConfig;
use crate::rollouts::offline_threshold;
use chrono::TimeZone;
use flotilla_shared::command::ContainerInfo;
use flotilla_shared::heartbeat::{DockerSnapshot, HostMetrics};
use flotilla_shared::rollout::{AgentOutcome, AGENT_TARGET_NAME};

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

/// `n` agents, `ag0` enrolled first; odd ones carry `env=staging`.
fn fleet(n: usize) -> Vec<FleetAgent> {
    (0..n)
        .map(|i| FleetAgent {
            id: format!("ag{i}"),
            labels: if i % 2 == 1 {
                flotilla_shared::selector::parse_labels("env=staging").unwrap()
            } else {
                Labels::new()
            },
            enrolled_at: at(i as i64),
        })
        .collect()
}

fn stage(s: &str) -> StageSpec {
    s.parse().unwrap()
}

#[test]
fn cumulative_counts_round_up_and_take_at_least_one() {
    assert_eq!(cumulative_count(5, 10), 1);
    assert_eq!(cumulative_count(5, 100), 5);
    assert_eq!(cumulative_count(5, 101), 6);
    assert_eq!(cumulative_count(25, 10), 3);
    assert_eq!(cumulative_count(100, 7), 7);
    assert_eq!(cumulative_count(1, 3), 1);
    assert_eq!(cumulative_count(50, 0), 0);
}

#[test]
fn members_are_cumulative_newest_first_and_skip_earlier_stages() {
    let mut f = fleet(20);
    order_fleet(&mut f, RolloutOrder::NewestFirst, 0);
    assert_eq!(f[0].id, "ag19");
    let mut in_rollout = HashSet::new();
    // Staging: every odd agent (10 of them).
    let staging = select_members(&stage("env=staging:48h"), &f, &in_rollout);
    assert_eq!(staging.len(), 10);
    assert_eq!(staging[0], "ag19");
    in_rollout.extend(staging);
    // 5 % of 20 = 1, but 10 fleet agents are already in: nothing new.
    assert!(select_members(&stage("5%"), &f, &in_rollout).is_empty());
    // 75 % of 20 = 15 cumulative: 5 more, the newest not yet in (even ids, newest first).
    let next = select_members(&stage("75%"), &f, &in_rollout);
    assert_eq!(next, vec!["ag18", "ag16", "ag14", "ag12", "ag10"]);
    in_rollout.extend(next);
    let rest = select_members(&stage("100%"), &f, &in_rollout);
    assert_eq!(rest.len(), 5);
}

#[test]
fn percentage_stages_from_scratch() {
    let mut f = fleet(10);
    order_fleet(&mut f, RolloutOrder::OldestFirst, 0);
    let mut in_rollout = HashSet::new();
    let first = select_members(&stage("5%"), &f, &in_rollout);
    assert_eq!(first, vec!["ag0"]);
    in_rollout.extend(first);
    let second = select_members(&stage("25%"), &f, &in_rollout);
    assert_eq!(second, vec!["ag1", "ag2"]);
}

#[test]
fn random_order_is_stable_per_seed() {
    let mut a = fleet(30);
    let mut b = fleet(30);
    b.reverse();
    order_fleet(&mut a, RolloutOrder::Random, 42);
    order_fleet(&mut b, RolloutOrder::Random, 42);
    assert_eq!(a, b);
    let mut c = fleet(30);
    order_fleet(&mut c, RolloutOrder::Random, 43);
    assert_ne!(a, c);
}

#[test]
fn failure_threshold_counts_beyond_accepted() {
    // Default max-failures 0: the first failure fires.
    assert!(!threshold_exceeded(0, 0, 0));
    assert!(threshold_exceeded(1, 0, 0));
    // After a resume with 1 accepted failure, the next one fires again.
    assert!(!threshold_exceeded(1, 1, 0));
    assert!(threshold_exceeded(2, 1, 0));
    // 10 % of 20 members = 2.
    let max = Limit::Percent(10).resolve(20);
    assert!(!threshold_exceeded(2, 0, max));
    assert!(threshold_exceeded(3, 0, max));
    assert_eq!(parallelism(Limit::Percent(10), 5), 1);
    assert_eq!(parallelism(Limit::Count(5), 3), 5);
}

fn running() -> Progress {
    let mut p = Progress::new(at(0));
    p.stage_started_at = Some(at(0));
    p.stage_deadline = Some(at(3600));
    p
}

#[test]
fn pause_stores_remaining_clocks_and_resume_restores_them() {
    let mut p = running();
    p.phase = StagePhase::Soaking;
    p.soak_ends_at = Some(at(1000));
    let (paused, t) = fire_failure_action(&p, FailureAction::Pause, 1, 0, at(400));
    assert_eq!(t.action, "paused");
    assert_eq!(paused.state, RolloutState::Paused);
    assert_eq!(paused.soak_remaining_secs, Some(600));
    assert_eq!(paused.soak_ends_at, None);
    assert_eq!(paused.deadline_remaining_secs, Some(3200));
    assert!(paused
        .reason
        .as_deref()
        .unwrap()
        .contains("exceed max-failures 0"));
    let (resumed, t) = apply_action(&paused, &RolloutAction::Resume, "ops", 1, at(5000)).unwrap();
    assert_eq!(t.action, "resumed");
    assert_eq!(resumed.state, RolloutState::Running);
    assert_eq!(resumed.soak_ends_at, Some(at(5600)));
    assert_eq!(resumed.stage_deadline, Some(at(8200)));
    assert_eq!(resumed.accepted_failures, 1);
    assert_eq!(resumed.reason, None);
}

#[test]
fn action_state_rules() {
    let p = running();
    let err = |p: &Progress, a: RolloutAction| apply_action(p, &a, "ops", 0, at(10)).unwrap_err();
    // Promote needs a soak.
    assert!(err(&p, RolloutAction::Promote).contains("still dispatching"));
    assert!(err(&p, RolloutAction::Resume).contains("only a paused rollout"));
    let mut soaking = p.clone();
    soaking.phase = StagePhase::Soaking;
    soaking.soak_ends_at = Some(at(1000));
    let (promoted, _) = apply_action(&soaking, &RolloutAction::Promote, "ops", 0, at(10)).unwrap();
    assert_eq!(promoted.soak_ends_at, Some(at(10)));
    // Pause then pause again; paused rollouts cannot be promoted.
    let (paused, _) =
        apply_action(&p, &RolloutAction::Pause { reason: None }, "ops", 0, at(10)).unwrap();
    assert_eq!(paused.reason.as_deref(), Some("paused by ops"));
    assert!(err(&paused, RolloutAction::Pause { reason: None }).contains("already paused"));
    assert!(err(&paused, RolloutAction::Promote).contains("resume it first"));
    // Abort from paused; abort --revert goes through reverting.
    let (aborted, t) = apply_action(
        &paused,
        &RolloutAction::Abort { revert: false },
        "ops",
        0,
        at(20),
    )
    .unwrap();
    assert_eq!(
        (aborted.state, t.action.as_str()),
        (RolloutState::Aborted, "aborted")
    );
    assert_eq!(aborted.finished_at, Some(at(20)));
    assert!(err(&aborted, RolloutAction::Resume).contains("no further action"));
    let (reverting, t) =
        apply_action(&p, &RolloutAction::Abort { revert: true }, "ops", 0, at(20)).unwrap();
    assert_eq!(
        (reverting.state, t.action.as_str()),
        (RolloutState::Reverting, "revert_started")
    );
    assert!(err(&reverting, RolloutAction::Abort { revert: true }).contains("already reverting"));
    assert!(err(&reverting, RolloutAction::Pause { reason: None }).contains("cannot be paused"));
    // Failure actions abort and revert.
    let (a, _) = fire_failure_action(&p, FailureAction::Abort, 2, 1, at(5));
    assert_eq!(a.state, RolloutState::Aborted);
    let (r, _) = fire_failure_action(&p, FailureAction::Revert, 2, 1, at(5));
    assert_eq!(r.state, RolloutState::Reverting);
}

#[test]
fn classify_update_results() {
    use flotilla_shared::api::DeliveryState as D;
    assert_eq!(
        classify_update(
            D::Succeeded,
            None,
            None,
            Some(UpdateOutcome::Updated),
            Some("app@sha256:1".into())
        ),
        UpdateVerdict::Updated {
            old_image: Some("app@sha256:1".into())
        }
    );
    assert_eq!(
        classify_update(
            D::Failed,
            Some("update_rolled_back"),
            Some("health check failed"),
            Some(UpdateOutcome::RolledBack),
            None
        ),
        UpdateVerdict::Failed {
            reason: "rolled_back: health check failed".into()
        }
    );
    assert_eq!(
        classify_update(D::Undelivered, None, None, None, None),
        UpdateVerdict::Undelivered
    );
    assert_eq!(
        classify_update(D::Failed, Some("no_such_container"), Some("x"), None, None),
        UpdateVerdict::NoSuchContainer
    );
    // The agent refuses to update a container that is not running: not a target.
    let refusal = "container job is exited: container.update replaces running containers; \
                   start it first";
    assert!(matches!(
        classify_update(
            D::Rejected,
            Some("container_not_running"),
            Some(refusal),
            None,
            None
        ),
        UpdateVerdict::NotRunning { .. }
    ));
    assert!(matches!(
        classify_update(
            D::Failed,
            Some("invalid_args"),
            Some("bad image"),
            None,
            None
        ),
        UpdateVerdict::Failed { .. }
    ));
    assert_eq!(
        classify_update(D::Failed, Some("no_result"), None, None, None),
        UpdateVerdict::Failed {
            reason: "no_result".into()
        }
    );
    assert_eq!(
        classify_update(D::Rejected, Some("policy_denied"), Some("no"), None, None),
        UpdateVerdict::Failed {
            reason: "policy_denied: no".into()
        }
    );
}

fn heartbeat(containers: Vec<ContainerInfo>) -> Heartbeat {
    Heartbeat {
        at: at(0),
        agent_version: "0".into(),
        host: HostMetrics::default(),
        docker: DockerSnapshot {
            version: None,
            api_version: None,
            error: None,
            containers,
            containers_omitted: 0,
        },
        backup: None,
        compose_drift: Vec::new(),
    }
}

fn container(name: &str, state: &str, health: Option<&str>, restarts: i64) -> ContainerInfo {
    ContainerInfo {
        id: "c1".into(),
        name: name.into(),
        image: "app:v2".into(),
        image_id: "sha256:2".into(),
        state: state.into(),
        status: String::new(),
        health: health.map(str::to_string),
        restart_count: restarts,
        oom_killed: false,
        exit_code: None,
        started_at: None,
        compose_project: None,
        compose_service: None,
        resources: None,
    }
}

#[test]
fn soak_verdicts() {
    let threshold = Duration::from_secs(180);
    let m = SoakMember {
        agent_id: "ag1".into(),
        containers: vec!["ghost".into()],
        finished_at: at(100),
    };
    let ok = heartbeat(vec![container("ghost", "running", Some("healthy"), 0)]);
    assert_eq!(
        soak_verdict(
            &m,
            true,
            Some((&ok, at(110))),
            &[],
            threshold,
            at(0),
            at(120)
        ),
        Ok(())
    );
    // The container is new: a restart before the first heartbeat after the update counts
    // (the baseline is 0, not the first heartbeat's count).
    assert!(soak_verdict(
        &m,
        true,
        Some((
            &heartbeat(vec![container("ghost", "running", None, 1)]),
            at(110)
        )),
        &[],
        threshold,
        at(0),
        at(120)
    )
    .unwrap_err()
    .contains("restarted (1 restarts"));
    // Missing from a heartbeat whose Docker snapshot failed: says nothing.
    let mut broken = heartbeat(vec![]);
    broken.docker.error = Some("engine down".into());
    assert_eq!(
        soak_verdict(
            &m,
            true,
            Some((&broken, at(110))),
            &[],
            threshold,
            at(0),
            at(120)
        ),
        Ok(())
    );
    // A heartbeat older than the update says nothing.
    let bad = heartbeat(vec![container("ghost", "exited", None, 2)]);
    assert_eq!(
        soak_verdict(
            &m,
            true,
            Some((&bad, at(90))),
            &[],
            threshold,
            at(0),
            at(120)
        ),
        Ok(())
    );
    let check = |hb: Heartbeat| {
        soak_verdict(
            &m,
            true,
            Some((&hb, at(130))),
            &[],
            threshold,
            at(0),
            at(140),
        )
        .unwrap_err()
    };
    assert!(check(bad.clone()).contains("is exited"));
    assert!(check(heartbeat(vec![container(
        "ghost",
        "running",
        Some("unhealthy"),
        2
    )]))
    .contains("unhealthy"));
    assert!(check(heartbeat(vec![container("ghost", "running", None, 3)])).contains("restarted"));
    let ok = heartbeat(vec![container("ghost", "running", Some("healthy"), 0)]);
    assert!(check(heartbeat(vec![])).contains("gone"));
    let mut oom = container("ghost", "running", None, 2);
    oom.oom_killed = true;
    assert!(check(heartbeat(vec![oom])).contains("OOM"));
    // Stored failure events fail it at once.
    let events = vec!["container.restart_loop: ghost restarted 5 times".to_string()];
    assert!(soak_verdict(
        &m,
        true,
        Some((&ok, at(130))),
        &events,
        threshold,
        at(0),
        at(140)
    )
    .unwrap_err()
    .contains("restart_loop"));
    // Offline: fine within the threshold, failed beyond it (from the last heartbeat).
    assert_eq!(
        soak_verdict(
            &m,
            false,
            Some((&ok, at(130))),
            &[],
            threshold,
            at(0),
            at(300)
        ),
        Ok(())
    );
    assert!(soak_verdict(
        &m,
        false,
        Some((&ok, at(130))),
        &[],
        threshold,
        at(0),
        at(311)
    )
    .unwrap_err()
    .contains("offline"));
    // Offline with no heartbeat at all counts from the update's end.
    assert!(
        soak_verdict(&m, false, None, &[], threshold, at(0), at(281))
            .unwrap_err()
            .contains("offline")
    );
}

#[test]
fn offline_threshold_is_the_unreachable_alert_threshold() {
    let mut config = RelayConfig {
        heartbeat_interval_secs: 60,
        ..RelayConfig::default()
    };
    assert_eq!(offline_threshold(&config), Duration::from_secs(180));
    config.alerts.unreachable_intervals = 5;
    assert_eq!(offline_threshold(&config), Duration::from_secs(300));
}

#[test]
fn relay_restart_does_not_count_as_member_offline_time() {
    let threshold = Duration::from_secs(180);
    let m = SoakMember {
        agent_id: "ag1".into(),
        containers: vec!["ghost".into()],
        finished_at: at(100),
    };
    let ok = heartbeat(vec![container("ghost", "running", None, 0)]);
    // The relay was down from 130 to 1000: its hub is empty and the last heartbeat is old.
    // Counted from the relay's start, the agent has been silent 50 s, not 920 s.
    assert!(soak_verdict(
        &m,
        false,
        Some((&ok, at(130))),
        &[],
        threshold,
        at(1000),
        at(1050)
    )
    .is_ok());
    assert_eq!(
        soak_verdict(&m, false, None, &[], threshold, at(1000), at(1050)),
        Ok(())
    );
    // Still silent a full threshold after the relay started: failed.
    assert!(soak_verdict(
        &m,
        false,
        Some((&ok, at(130))),
        &[],
        threshold,
        at(1000),
        at(1181)
    )
    .unwrap_err()
    .contains("offline for 181s"));
}

#[test]
fn failure_tolerance_rounds_down_parallelism_rounds_up() {
    assert_eq!(failure_tolerance(Limit::Percent(10), 1), 0);
    assert_eq!(failure_tolerance(Limit::Percent(10), 9), 0);
    assert_eq!(failure_tolerance(Limit::Percent(10), 10), 1);
    assert_eq!(failure_tolerance(Limit::Percent(10), 19), 1);
    assert_eq!(failure_tolerance(Limit::Percent(100), 3), 3);
    assert_eq!(failure_tolerance(Limit::Count(2), 1), 2);
    assert_eq!(parallelism(Limit::Percent(10), 1), 1);
    assert_eq!(parallelism(Limit::Percent(10), 11), 2);
    assert!(!threshold_exceeded(
        0,
        0,
        failure_tolerance(Limit::Percent(10), 1)
    ));
    assert!(threshold_exceeded(
        1,
        0,
        failure_tolerance(Limit::Percent(10), 1)
    ));
}

#[test]
fn time_arithmetic_saturates() {
    assert_eq!(add_secs(at(0), 10), at(10));
    assert_eq!(add_secs(at(0), u64::MAX), DateTime::<Utc>::MAX_UTC);
    assert_eq!(add_secs(at(0), i64::MAX as u64), DateTime::<Utc>::MAX_UTC);
}

#[test]
fn a_stage_that_updated_nobody_pauses_and_resume_moves_on() {
    let mut v = StageView {
        members: 3,
        ..StageView::default()
    };
    v.counts.add(AgentOutcome::Undelivered, 2);
    v.counts.add(AgentOutcome::NoTarget, 1);
    let why = stage_updated_nobody(1, &v, false).unwrap();
    assert!(why.starts_with("stage 2 updated no agent: 2 undelivered, 1 without a target"));
    // Somebody updated, or no member at all: nothing to say.
    let mut ok = v.clone();
    ok.counts.add(AgentOutcome::Updated, 1);
    assert_eq!(stage_updated_nobody(1, &ok, false), None);
    assert_eq!(stage_updated_nobody(1, &StageView::default(), false), None);
    // Paused as a finished soak: resume ends the soak at once (the next stage starts), it
    // does not pause again.
    let mut p = Progress::new(at(0));
    p.stage_started_at = Some(at(0));
    p.stage_deadline = Some(at(3600));
    let (paused, t) = nobody_updated_pause(&p, why.clone(), at(10));
    assert_eq!(t.action, "paused");
    assert_eq!(paused.state, RolloutState::Paused);
    assert_eq!(paused.reason.as_deref(), Some(why.as_str()));
    let (resumed, _) = apply_action(&paused, &RolloutAction::Resume, "ops", 0, at(20)).unwrap();
    assert_eq!(resumed.phase, StagePhase::Soaking);
    assert_eq!(resumed.soak_ends_at, Some(at(20)));
}

#[test]
fn revert_deadline_is_the_revert_start_plus_stage_timeout() {
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "name": "x", "selector": "*", "target": {"container": "ghost"}, "image": "a:2",
        "stages": ["100%"], "order": "newest-first", "seed": 1, "max_failures": "0",
        "on_failure": "revert", "parallelism": "1", "health": "auto", "strategy": "stop-first",
        "stage_timeout_secs": 600
    }))
    .unwrap();
    let mut progress = Progress::new(at(0));
    progress.state = RolloutState::Reverting;
    progress.updated_at = at(100);
    let row = RolloutRow {
        id: "ro_1".into(),
        spec,
        progress,
        created_at: at(0),
        created_by: "ops".into(),
    };
    assert_eq!(revert_deadline(&row), at(700));
}

#[test]
fn agent_soak_checks_the_connection_and_the_reported_version() {
    let threshold = Duration::from_secs(180);
    let m = SoakMember {
        agent_id: "ag1".into(),
        containers: vec![AGENT_TARGET_NAME.into()],
        finished_at: at(100),
    };
    let verdict = |connected: bool, reported: Option<&str>, hb: Option<(&Heartbeat, i64)>, now| {
        agent_soak_verdict(
            &m,
            "0.2.0",
            connected,
            reported,
            hb.map(|(h, t)| (h, at(t))),
            threshold,
            at(0),
            at(now),
        )
    };
    // Connected on the target version (build metadata aside): fine.
    assert_eq!(verdict(true, Some("0.2.0"), None, 500), Ok(()));
    assert_eq!(verdict(true, Some("0.2.0+b.7"), None, 500), Ok(()));
    // Connected on another version: its updater reverted it, or someone installed another.
    let e = verdict(true, Some("0.1.0"), None, 500).unwrap_err();
    assert!(e.contains("reports version 0.1.0, not 0.2.0"), "{e}");
    // A heartbeat sent after the upgrade finished is newer news than the connect.
    let mut hb = heartbeat(Vec::new());
    hb.agent_version = "0.1.0".into();
    assert!(verdict(true, Some("0.2.0"), Some((&hb, 150)), 500).is_err());
    // One from before the upgrade finished says nothing.
    assert_eq!(verdict(true, Some("0.2.0"), Some((&hb, 50)), 500), Ok(()));
    // Offline: fine within the unreachable threshold (the version is not judged then),
    // failed beyond it. Containers do not matter for an agent rollout.
    assert_eq!(verdict(false, Some("0.1.0"), None, 250), Ok(()));
    let e = verdict(false, Some("0.2.0"), None, 400).unwrap_err();
    assert!(e.contains("offline for 300s"), "{e}");
}

#[test]
fn an_agent_stage_already_on_the_version_is_done_not_paused() {
    // Every member already ran the version (or a newer one): nothing to update, no pause.
    let mut v = StageView {
        members: 2,
        up_to_date: 2,
        ..StageView::default()
    };
    v.counts.add(AgentOutcome::NoTarget, 2);
    assert_eq!(stage_updated_nobody(0, &v, true), None);
    // One up to date, one undelivered: as for a container rollout with one updated member.
    let mut mixed = StageView {
        members: 2,
        up_to_date: 1,
        ..StageView::default()
    };
    mixed.counts.add(AgentOutcome::NoTarget, 1);
    mixed.counts.add(AgentOutcome::Undelivered, 1);
    assert_eq!(stage_updated_nobody(0, &mixed, true), None);
    // Nobody up to date: it pauses, in words for agents (a build, not a container).
    let mut none = StageView {
        members: 3,
        ..StageView::default()
    };
    none.counts.add(AgentOutcome::NoTarget, 1);
    none.counts.add(AgentOutcome::Skipped, 2);
    let why = stage_updated_nobody(0, &none, true).unwrap();
    assert_eq!(
        why,
        "stage 1 updated no agent: 1 without a build for their architecture, 2 skipped of 3 \
         member(s); resume to go on to the next stage, or abort"
    );
    assert!(!why.contains("container"), "{why}");
}

fn c(o: &str, r: Option<&str>) -> (String, Option<String>) {
    (o.to_string(), r.map(str::to_string))
}

#[test]
fn agent_outcome_from_containers() {
    assert_eq!(agent_outcome("updating", &[c("updating", None)]), None);
    assert_eq!(
        agent_outcome("updating", &[c("updated", None), c("failed", Some("x"))]),
        Some((AgentOutcome::Failed, Some("x".into())))
    );
    assert_eq!(
        agent_outcome("updating", &[c("updated", None), c("undelivered", None)]),
        Some((AgentOutcome::Updated, None))
    );
    assert_eq!(
        agent_outcome("updating", &[c("undelivered", Some(NO_SUCH_CONTAINER))]).map(|x| x.0),
        Some(AgentOutcome::NoTarget)
    );
    assert_eq!(
        agent_outcome("updating", &[c("undelivered", None)]).map(|x| x.0),
        Some(AgentOutcome::Undelivered)
    );
    // Refused because not running: no target, like a missing container.
    assert_eq!(
        agent_outcome(
            "updating",
            &[
                c("undelivered", Some("not_running: container x is exited")),
                c("undelivered", Some(NO_SUCH_CONTAINER))
            ]
        )
        .map(|x| x.0),
        Some(AgentOutcome::NoTarget)
    );
    // A late result re-evaluates a final agent.
    assert_eq!(
        agent_outcome("failed", &[c("updated", None)]).map(|x| x.0),
        Some(AgentOutcome::Updated)
    );
    assert_eq!(
        agent_outcome("reverting", &[c("reverted", None), c("updated", None)]),
        None
    );
    assert_eq!(
        agent_outcome(
            "reverting",
            &[c("reverted", None), c("revert_failed", Some("y"))]
        )
        .map(|x| x.0),
        Some(AgentOutcome::RevertFailed)
    );
    assert_eq!(
        agent_outcome("reverting", &[c("reverted", None), c("failed", None)]).map(|x| x.0),
        Some(AgentOutcome::Reverted)
    );
}
