//! Update history: rows made at dispatch, advanced by progress events, finished by results and by
//! the relay's own endings. Against real SQLite files (writer plus read-only connections).

use super::*;
use crate::store::sql::{params, ConnExt};
use flotilla_shared::command::ErrorInfo;
use flotilla_shared::update::{
    ContainerUpdateArgs, HealthEvidence, HealthSpec, PhaseTiming, UpdateOutcome, UpdatePhase,
    UpdateReport, UpdateStrategy,
};

/// A file database in its own directory, removed on drop.
struct FileStore {
    store: Store,
    dir: std::path::PathBuf,
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn file_store() -> FileStore {
    let dir = std::env::temp_dir().join(new_id("relay-updates-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("relay.db")).await.unwrap();
    assert_eq!(store.read_connections(), READ_CONNECTIONS);
    FileStore { store, dir }
}

fn update_args(container: &str, image: &str) -> ContainerUpdateArgs {
    ContainerUpdateArgs {
        container: container.into(),
        image: image.into(),
        health: "http:8080/healthz".parse().unwrap(),
        health_timeout_secs: Some(30),
        stable_secs: None,
        strategy: UpdateStrategy::StopFirst,
        allow_drift: false,
    }
}

fn update_command(
    id: &str,
    args: ContainerUpdateArgs,
    targets: Vec<(String, DeliveryState)>,
    ttl_secs: i64,
) -> NewCommand {
    let mut c = command(id, targets, ttl_secs);
    c.command = Command::ContainerUpdate(args);
    c.created_by = "ops-ci".into();
    c
}

fn report(outcome: UpdateOutcome) -> UpdateReport {
    UpdateReport {
        outcome,
        container: "web".into(),
        image: "reg.example/app:v2".into(),
        strategy: UpdateStrategy::StopFirst,
        health: HealthSpec::Http {
            port: 8080,
            path: "/healthz".into(),
        },
        old_container_id: Some("c0ffee".into()),
        old_image: Some("reg.example/app:v1".into()),
        old_image_id: Some("sha256:1111".into()),
        old_image_digest: None,
        new_container_id: Some("beef".into()),
        new_image_id: Some("sha256:2222".into()),
        new_image_digest: Some("reg.example/app@sha256:2222".into()),
        phase: UpdatePhase::Done,
        timings: vec![PhaseTiming {
            phase: "pull".into(),
            ms: 1200,
        }],
        health_evidence: Some(HealthEvidence {
            method: "http".into(),
            passed: outcome == UpdateOutcome::Updated,
            checks: 4,
            check_ms: 3000,
            stable_ms: 0,
            detail: "GET /healthz answered 500".into(),
            last_output: None,
        }),
        rollback_health_evidence: None,
        reason: (outcome != UpdateOutcome::Updated).then(|| "health check failed".into()),
        failed_logs: vec!["panic: boom".into()],
        recovered: false,
        old_stopped: true,
        total_ms: 15_000,
        compose: None,
    }
}

fn update_result(
    command_id: &str,
    status: ResultStatus,
    report: Option<&UpdateReport>,
    error: Option<&str>,
) -> CommandResult {
    CommandResult {
        command_id: command_id.into(),
        status,
        output: report.map(|r| serde_json::to_value(r).unwrap()),
        error: error.map(|code| ErrorInfo {
            code: code.into(),
            message: format!("{code} happened"),
        }),
        started_at: now(),
        finished_at: now(),
    }
}

fn progress(command_id: &str, phase: &str) -> AgentEvent {
    AgentEvent {
        kind: EventKind::ContainerUpdate,
        at: now(),
        container_id: Some("c0ffee".into()),
        container_name: Some("web".into()),
        message: format!("update of web: {phase}"),
        attributes: [
            ("command_id".to_string(), command_id.to_string()),
            ("phase".to_string(), phase.to_string()),
        ]
        .into_iter()
        .collect(),
    }
}

async fn history(store: &Store, agent_id: &str) -> Vec<UpdateRecord> {
    store
        .updates(UpdateQuery {
            agent_id: Some(agent_id.into()),
            limit: 100,
            ..UpdateQuery::default()
        })
        .await
        .unwrap()
}

async fn one(store: &Store, command_id: &str) -> UpdateRecord {
    let mut rows = store
        .updates(UpdateQuery {
            command_id: Some(command_id.into()),
            limit: 10,
            ..UpdateQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.remove(0)
}

#[tokio::test]
async fn update_is_recorded_from_dispatch_through_progress_to_its_report() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    // Another kind makes no history.
    store
        .create_command(command(
            "cmd_ping",
            vec![(a.id.clone(), DeliveryState::Queued)],
            600,
        ))
        .await
        .unwrap();
    assert!(history(store, &a.id).await.is_empty());

    store
        .create_command(update_command(
            "cmd_up",
            update_args("web", "reg.example/app:v2"),
            vec![(a.id.clone(), DeliveryState::Queued)],
            600,
        ))
        .await
        .unwrap();
    let r = one(store, "cmd_up").await;
    assert_eq!(
        (r.agent_id.as_str(), r.container.as_str(), r.image.as_str()),
        (a.id.as_str(), "web", "reg.example/app:v2")
    );
    assert_eq!(
        r.health,
        HealthSpec::Http {
            port: 8080,
            path: "/healthz".into()
        }
    );
    assert_eq!(r.strategy, UpdateStrategy::StopFirst);
    assert_eq!(r.requested_by, "ops-ci");
    assert!(r.active);
    assert_eq!(r.state, DeliveryState::Queued);
    assert_eq!((r.phase, r.outcome, r.finished_at), (None, None, None));
    assert_eq!(r.job_id, None);
    assert_eq!(
        store
            .is_updating(a.id.clone(), "web".into())
            .await
            .unwrap()
            .as_deref(),
        Some("cmd_up")
    );
    assert_eq!(
        store.is_updating(a.id.clone(), "db".into()).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .is_updating("ag_other".into(), "web".into())
            .await
            .unwrap(),
        None
    );

    // The live delivery state shows through while it runs.
    store
        .mark_received("cmd_up".into(), a.id.clone())
        .await
        .unwrap();
    assert_eq!(one(store, "cmd_up").await.state, DeliveryState::Received);

    // Progress events move the phase; a re-sent event (same seq) changes nothing; another
    // command's event is not this update's.
    let pulling = progress("cmd_up", "pulling");
    assert!(store
        .insert_event(a.id.clone(), 1, pulling.clone())
        .await
        .unwrap());
    let r = one(store, "cmd_up").await;
    assert_eq!(r.phase.as_deref(), Some("pulling"));
    assert_eq!(r.phase_at, Some(pulling.at));
    assert_eq!(r.container_name.as_deref(), Some("web"));
    assert!(store
        .insert_event(a.id.clone(), 2, progress("cmd_up", "health_gate"))
        .await
        .unwrap());
    assert!(!store
        .insert_event(a.id.clone(), 2, progress("cmd_up", "rolling_back"))
        .await
        .unwrap());
    assert!(store
        .insert_event(a.id.clone(), 3, progress("cmd_other", "committing"))
        .await
        .unwrap());
    assert_eq!(
        one(store, "cmd_up").await.phase.as_deref(),
        Some("health_gate")
    );
    let active = store.active_updates().await.unwrap();
    assert_eq!(
        active
            .iter()
            .map(|u| u.command_id.as_str())
            .collect::<Vec<_>>(),
        vec!["cmd_up"]
    );
    let counts = store
        .fleet_counts(now() - chrono::Duration::hours(24))
        .await
        .unwrap();
    assert_eq!(
        (counts.updating, counts.updates_active, counts.rolled_back),
        (1, 1, 0)
    );
    assert!(store.updating_agents().await.unwrap().contains(&a.id));

    // A failed update's result carries its report: stored in the delivery and in the history.
    let rolled_back = report(UpdateOutcome::RolledBack);
    let result = update_result(
        "cmd_up",
        ResultStatus::Failed,
        Some(&rolled_back),
        Some("update_rolled_back"),
    );
    assert!(matches!(
        store
            .record_result(a.id.clone(), result.clone())
            .await
            .unwrap(),
        ResultOutcome::Recorded {
            state: DeliveryState::Failed,
            ..
        }
    ));
    let info = info_of(store, "cmd_up", &a.id).await;
    assert_eq!(
        info.result.as_ref().and_then(|r| r.output.clone()),
        Some(serde_json::to_value(&rolled_back).unwrap())
    );
    let r = one(store, "cmd_up").await;
    assert!(!r.active);
    assert_eq!(r.state, DeliveryState::Failed);
    assert_eq!(r.outcome, Some(UpdateOutcome::RolledBack));
    assert_eq!(r.report, Some(rolled_back));
    let counts = store
        .fleet_counts(now() - chrono::Duration::hours(24))
        .await
        .unwrap();
    assert_eq!((counts.updating, counts.rolled_back), (0, 1));
    assert!(store.updating_agents().await.unwrap().is_empty());
    let since = now() - chrono::Duration::hours(24);
    assert!(store
        .rolled_back_agents(since)
        .await
        .unwrap()
        .contains(&a.id));
    // Outside the window it no longer counts.
    let counts = store
        .fleet_counts(now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(counts.rolled_back, 0);
    assert_eq!(r.phase.as_deref(), Some("done"));
    assert_eq!(r.finished_at, Some(result.finished_at));
    assert_eq!(
        r.error,
        Some(ErrorInfo {
            code: "update_rolled_back".into(),
            message: "update_rolled_back happened".into()
        })
    );
    assert_eq!(
        store.is_updating(a.id.clone(), "web".into()).await.unwrap(),
        None
    );
    assert!(store.active_updates().await.unwrap().is_empty());
    // A progress event arriving after the result does not rewrite the finished record.
    assert!(store
        .insert_event(a.id.clone(), 4, progress("cmd_up", "rolling_back"))
        .await
        .unwrap());
    assert_eq!(one(store, "cmd_up").await.phase.as_deref(), Some("done"));
    // A duplicate result changes nothing.
    assert_eq!(
        store
            .record_result(
                a.id.clone(),
                update_result("cmd_up", ResultStatus::Succeeded, None, None)
            )
            .await
            .unwrap(),
        ResultOutcome::AlreadyFinal
    );
    assert_eq!(
        one(store, "cmd_up").await.outcome,
        Some(UpdateOutcome::RolledBack)
    );
}

#[tokio::test]
async fn history_filters_and_orders_newest_first() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    let b = enroll_ok(store, "t", new_agent("b", "")).await;
    for (id, agent, container) in [
        ("cmd_1", &a, "web"),
        ("cmd_2", &a, "db"),
        ("cmd_3", &a, "web"),
        ("cmd_4", &b, "web"),
    ] {
        store
            .create_command(update_command(
                id,
                update_args(container, "reg.example/app:v2"),
                vec![(agent.id.clone(), DeliveryState::Queued)],
                600,
            ))
            .await
            .unwrap();
    }
    let updated = report(UpdateOutcome::Updated);
    store
        .record_result(
            a.id.clone(),
            update_result("cmd_1", ResultStatus::Succeeded, Some(&updated), None),
        )
        .await
        .unwrap();
    let ids = |rows: Vec<UpdateRecord>| rows.into_iter().map(|r| r.command_id).collect::<Vec<_>>();
    assert_eq!(
        ids(history(store, &a.id).await),
        ["cmd_3", "cmd_2", "cmd_1"]
    );
    let q = |container: Option<&str>, active: Option<bool>, limit: u32| UpdateQuery {
        agent_id: Some(a.id.clone()),
        container: container.map(String::from),
        active,
        command_id: None,
        limit,
    };
    assert_eq!(
        ids(store.updates(q(Some("web"), None, 100)).await.unwrap()),
        ["cmd_3", "cmd_1"]
    );
    assert_eq!(
        ids(store
            .updates(q(Some("web"), Some(true), 100))
            .await
            .unwrap()),
        ["cmd_3"]
    );
    assert_eq!(
        ids(store.updates(q(None, Some(false), 100)).await.unwrap()),
        ["cmd_1"]
    );
    assert_eq!(
        ids(store.updates(q(None, None, 1)).await.unwrap()),
        ["cmd_3"]
    );
    // Fleet-wide: every agent's active updates.
    assert_eq!(
        ids(store.active_updates().await.unwrap()),
        ["cmd_4", "cmd_3", "cmd_2"]
    );
    assert_eq!(
        one(store, "cmd_1").await.outcome,
        Some(UpdateOutcome::Updated)
    );
}

#[tokio::test]
async fn updates_that_end_without_a_report_are_finished_not_in_progress() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    let mk = |id: &str, ttl: i64| {
        update_command(
            id,
            update_args("web", "reg.example/app:v2"),
            vec![(a.id.clone(), DeliveryState::Queued)],
            ttl,
        )
    };

    // Rejected by the agent's policy: no report.
    store.create_command(mk("cmd_rejected", 600)).await.unwrap();
    store
        .record_result(
            a.id.clone(),
            update_result(
                "cmd_rejected",
                ResultStatus::Rejected,
                None,
                Some("policy_denied"),
            ),
        )
        .await
        .unwrap();
    let r = one(store, "cmd_rejected").await;
    assert!(!r.active);
    assert_eq!(r.state, DeliveryState::Rejected);
    assert_eq!((r.outcome, r.report), (None, None));
    assert_eq!(r.error.unwrap().code, "policy_denied");

    // Interrupted by an agent restart: failed without a report.
    store
        .create_command(mk("cmd_interrupted", 600))
        .await
        .unwrap();
    store
        .record_result(
            a.id.clone(),
            update_result(
                "cmd_interrupted",
                ResultStatus::Failed,
                None,
                Some("interrupted"),
            ),
        )
        .await
        .unwrap();
    let r = one(store, "cmd_interrupted").await;
    assert!(!r.active && r.outcome.is_none() && r.report.is_none());
    assert_eq!(r.error.unwrap().code, "interrupted");

    // Never delivered before it expired.
    store
        .create_command(mk("cmd_undelivered", -1))
        .await
        .unwrap();
    // Accepted, then no result in time; later the real result arrives and wins.
    store.create_command(mk("cmd_late", -1000)).await.unwrap();
    store
        .mark_received("cmd_late".into(), a.id.clone())
        .await
        .unwrap();
    let ended = store.expire_deliveries(now(), GRACE).await.unwrap();
    assert_eq!(ended.len(), 2, "{ended:?}");
    let r = one(store, "cmd_undelivered").await;
    assert!(!r.active);
    assert_eq!(r.state, DeliveryState::Undelivered);
    assert_eq!((r.outcome, r.error), (None, None));
    assert!(r.finished_at.is_some());
    let r = one(store, "cmd_late").await;
    assert!(!r.active);
    assert_eq!(r.state, DeliveryState::Failed);
    assert_eq!(r.error.unwrap().code, relay_error_codes::NO_RESULT);
    // Progress still reported meanwhile (the agent was offline, say) is kept as information.
    assert!(store
        .insert_event(a.id.clone(), 1, progress("cmd_late", "committing"))
        .await
        .unwrap());
    assert_eq!(
        one(store, "cmd_late").await.phase.as_deref(),
        Some("committing")
    );
    let mut recovered = report(UpdateOutcome::Updated);
    recovered.recovered = true;
    assert!(matches!(
        store
            .record_result(
                a.id.clone(),
                update_result("cmd_late", ResultStatus::Succeeded, Some(&recovered), None),
            )
            .await
            .unwrap(),
        ResultOutcome::Recorded {
            replaced: Some(DeliveryState::Failed),
            ..
        }
    ));
    let r = one(store, "cmd_late").await;
    assert_eq!(r.state, DeliveryState::Succeeded);
    assert_eq!(r.outcome, Some(UpdateOutcome::Updated));
    assert_eq!(r.error, None);
    assert!(r.report.unwrap().recovered);

    // Revoked after accepting it: failed agent_revoked; revoked before: undelivered.
    store.create_command(mk("cmd_accepted", 600)).await.unwrap();
    store
        .mark_received("cmd_accepted".into(), a.id.clone())
        .await
        .unwrap();
    store.create_command(mk("cmd_queued", 600)).await.unwrap();
    assert_eq!(store.active_updates().await.unwrap().len(), 2);
    store.revoke_agent(a.id.clone()).await.unwrap().unwrap();
    let r = one(store, "cmd_accepted").await;
    assert_eq!(
        (r.active, r.state, r.error.map(|e| e.code)),
        (
            false,
            DeliveryState::Failed,
            Some(relay_error_codes::AGENT_REVOKED.to_string())
        )
    );
    let r = one(store, "cmd_queued").await;
    assert_eq!((r.active, r.state), (false, DeliveryState::Undelivered));
    assert!(store.active_updates().await.unwrap().is_empty());
}

#[tokio::test]
async fn job_targets_get_their_update_row_when_dispatched() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let agents = [
        enroll_ok(store, "t", new_agent("a", "")).await,
        enroll_ok(store, "t", new_agent("b", "")).await,
        enroll_ok(store, "t", new_agent("c", "")).await,
    ];
    let mut cmd = update_command(
        "cmd_job",
        update_args("web", "reg.example/app:v3"),
        agents
            .iter()
            .map(|a| (a.id.clone(), DeliveryState::Pending))
            .collect(),
        600,
    );
    cmd.job_id = Some("job_up".into());
    store
        .create_job(
            NewJob {
                id: "job_up".into(),
                selector: Selector::all(),
                max_concurrency: 1,
                max_errors: Some(0),
                created_at: now(),
                expires_at: cmd.expires_at,
                created_by: "ops-ci".into(),
            },
            cmd,
        )
        .await
        .unwrap();
    // Pending targets are not being updated yet.
    assert!(store.active_updates().await.unwrap().is_empty());
    let step = store.advance_job("job_up".into()).await.unwrap().unwrap();
    assert_eq!(step.queued, vec![agents[0].id.clone()]);
    let rows = store.active_updates().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].agent_id, agents[0].id);
    assert_eq!(rows[0].job_id.as_deref(), Some("job_up"));
    assert_eq!(rows[0].image, "reg.example/app:v3");
    assert_eq!(rows[0].requested_by, "ops-ci");
    // The first one fails (exceeds max errors 0): the rest are skipped and never get a row.
    let failed = report(UpdateOutcome::FailedUnchanged);
    store
        .record_result(
            agents[0].id.clone(),
            update_result(
                "cmd_job",
                ResultStatus::Failed,
                Some(&failed),
                Some("update_failed_unchanged"),
            ),
        )
        .await
        .unwrap();
    let step = store.advance_job("job_up".into()).await.unwrap().unwrap();
    assert_eq!(step.skipped, 2);
    for a in &agents[1..] {
        assert!(history(store, &a.id).await.is_empty());
    }
    let r = one(store, "cmd_job").await;
    assert_eq!(r.outcome, Some(UpdateOutcome::FailedUnchanged));
    assert_eq!(r.report, Some(failed));
}

#[tokio::test]
async fn a_version_2_database_gains_the_update_history() {
    let dir = std::env::temp_dir().join(new_id("relay-updates-migrate"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.db");
    // The schema as the previous release left it, with an agent in it.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &sqlite::MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO agents (id, name, public_key, labels, facts, enrolled_at) \
             VALUES ('ag_old', 'old', 'key', '{}', \
             '{\"hostname\":\"h\",\"os\":\"linux\",\"arch\":\"x86_64\",\"agent_version\":\"0.1.0\"}', \
             '2026-01-01T00:00:00.000000Z')",
            [],
        )
        .unwrap();
    }
    let store = Store::open(&path).await.unwrap();
    let version: i64 = store
        .read(|c| Ok(c.query_row("PRAGMA user_version", params![], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(version as usize, sqlite::MIGRATIONS.len());
    assert_eq!(
        store.agent("ag_old".into()).await.unwrap().unwrap().name,
        "old"
    );
    assert!(history(&store, "ag_old").await.is_empty());
    store
        .create_command(update_command(
            "cmd_after",
            update_args("web", "reg.example/app:v2"),
            vec![("ag_old".into(), DeliveryState::Queued)],
            600,
        ))
        .await
        .unwrap();
    assert!(one(&store, "cmd_after").await.active);
    drop(store);
    // Opening again applies nothing twice.
    let store = Store::open(&path).await.unwrap();
    assert_eq!(history(&store, "ag_old").await.len(), 1);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn retention_prunes_finished_updates_only() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    for id in ["cmd_done", "cmd_running"] {
        store
            .create_command(update_command(
                id,
                update_args("web", "reg.example/app:v2"),
                vec![(a.id.clone(), DeliveryState::Queued)],
                3600,
            ))
            .await
            .unwrap();
    }
    store
        .record_result(
            a.id.clone(),
            update_result(
                "cmd_done",
                ResultStatus::Succeeded,
                Some(&report(UpdateOutcome::Updated)),
                None,
            ),
        )
        .await
        .unwrap();
    let pruned = store
        .prune(now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(pruned.updates, 1);
    let left = history(store, &a.id).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].command_id, "cmd_running");
}

// --- compose (issue 17, part 1) ---
#[tokio::test]
async fn a_compose_update_is_recorded_one_row_per_container_under_its_group() {
    use flotilla_shared::compose::{ComposeReport, ComposeUpdateArgs, ComposeUpdateReport};
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    let mut c = command("cmd_grp", vec![(a.id.clone(), DeliveryState::Queued)], 600);
    c.command = Command::ComposeUpdate(ComposeUpdateArgs {
        project: "shop".into(),
        services: Vec::new(),
        image: "reg.example/app:v2".into(),
        health: HealthSpec::Auto,
        health_timeout_secs: None,
        stable_secs: None,
        strategy: UpdateStrategy::StopFirst,
        allow_drift: false,
    });
    store.create_command(c).await.unwrap();
    // At dispatch: one active row for the project.
    let r = one(store, "cmd_grp").await;
    assert_eq!(r.target_label(), "compose project shop");
    assert!(r.active);
    assert_eq!((r.group_id, r.compose_service), (None, None));

    // The agent's first progress event about a container starts its row.
    let mut ev = progress("cmd_grp.web", "pulling");
    ev.container_name = Some("shop-web-1".into());
    ev.attributes.insert("group".into(), "cmd_grp".into());
    assert!(store.insert_event(a.id.clone(), 1, ev).await.unwrap());
    let w = one(store, "cmd_grp.web").await;
    assert_eq!(w.group_id.as_deref(), Some("cmd_grp"));
    assert_eq!(w.compose_service.as_deref(), Some("web"));
    assert_eq!(w.phase.as_deref(), Some("pulling"));
    assert_eq!(w.image, "reg.example/app:v2");
    assert!(w.active);
    assert_eq!(
        store
            .is_updating(a.id.clone(), "shop-web-1".into())
            .await
            .unwrap()
            .as_deref(),
        Some("cmd_grp.web"),
        "alerts about the container are suppressed while it updates"
    );

    // The result: both services rolled back (the worker failed its gate).
    let service = |name: &str, container: &str| {
        let mut r = report(UpdateOutcome::RolledBack);
        r.container = container.into();
        r.compose = Some(ComposeReport {
            project: "shop".into(),
            service: name.into(),
            ..Default::default()
        });
        r
    };
    let group = ComposeUpdateReport {
        project: "shop".into(),
        image: "reg.example/app:v2".into(),
        outcome: UpdateOutcome::RolledBack,
        reason: Some("the health gate failed for shop-worker-1".into()),
        compose: None,
        services: vec![
            service("web", "shop-web-1"),
            service("worker", "shop-worker-1"),
        ],
    };
    let mut result = update_result(
        "cmd_grp",
        ResultStatus::Failed,
        None,
        Some("update_rolled_back"),
    );
    result.output = Some(serde_json::to_value(&group).unwrap());
    store.record_result(a.id.clone(), result).await.unwrap();
    let rows = history(store, &a.id).await;
    let mut ids: Vec<&str> = rows.iter().map(|r| r.command_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["cmd_grp.web", "cmd_grp.worker"],
        "the project's row is replaced"
    );
    for r in &rows {
        assert!(!r.active);
        assert_eq!(r.outcome, Some(UpdateOutcome::RolledBack));
        assert_eq!(r.state, DeliveryState::Failed);
        assert_eq!(r.error.as_ref().unwrap().code, "update_rolled_back");
        assert_eq!(r.compose_project.as_deref(), Some("shop"));
        assert_eq!(r.group_id.as_deref(), Some("cmd_grp"));
        assert_eq!(r.report.as_ref().unwrap().container, r.container);
    }
    // What the update rules read: one rolled-back update per container.
    let finished = store
        .finished_updates(now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    let mut containers: Vec<(&str, Option<UpdateOutcome>)> = finished
        .iter()
        .map(|f| (f.container.as_str(), f.outcome))
        .collect();
    containers.sort_by_key(|c| c.0);
    assert_eq!(
        containers,
        [
            ("shop-web-1", Some(UpdateOutcome::RolledBack)),
            ("shop-worker-1", Some(UpdateOutcome::RolledBack))
        ]
    );

    // A refusal that touched nothing keeps the project's row, with the error.
    let mut c = command("cmd_grp2", vec![(a.id.clone(), DeliveryState::Queued)], 600);
    c.command = Command::ComposeUpdate(ComposeUpdateArgs {
        project: "ghost".into(),
        services: Vec::new(),
        image: "reg.example/app:v2".into(),
        health: HealthSpec::Auto,
        health_timeout_secs: None,
        stable_secs: None,
        strategy: UpdateStrategy::StopFirst,
        allow_drift: false,
    });
    store.create_command(c).await.unwrap();
    let refusal = ComposeUpdateReport {
        project: "ghost".into(),
        image: "reg.example/app:v2".into(),
        outcome: UpdateOutcome::FailedUnchanged,
        reason: Some("no such project".into()),
        compose: None,
        services: Vec::new(),
    };
    let mut result = update_result(
        "cmd_grp2",
        ResultStatus::Failed,
        None,
        Some("no_such_container"),
    );
    result.output = Some(serde_json::to_value(&refusal).unwrap());
    store.record_result(a.id.clone(), result).await.unwrap();
    let r = one(store, "cmd_grp2").await;
    assert!(!r.active);
    assert_eq!(r.outcome, Some(UpdateOutcome::FailedUnchanged));
    assert_eq!(r.error.unwrap().code, "no_such_container");
}
