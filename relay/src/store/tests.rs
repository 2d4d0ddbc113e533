use super::*;
use crate::store::sql::{params, ConnExt};

#[test]
fn database_urls_are_shown_without_passwords() {
    assert_eq!(
        redact_database_url("postgres://relay:s3cret@db.example:5432/flotilla?password=x"),
        "postgres://relay:***@db.example:5432/flotilla"
    );
    assert_eq!(
        redact_database_url("postgres://relay@db/flotilla"),
        "postgres://relay@db/flotilla"
    );
    assert_eq!(
        redact_database_url("postgresql://db/flotilla?sslmode=disable"),
        "postgresql://db/flotilla"
    );
}
use flotilla_shared::api::JobState;
use flotilla_shared::command::{Audience, Command, PingArgs, ResultStatus};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::ids::{new_id, token_hash};
use flotilla_shared::signing::SigningKey;

fn labels(s: &str) -> Labels {
    flotilla_shared::selector::parse_labels(s).unwrap()
}

async fn token(store: &Store, secret: &str, ttl_secs: i64, max_uses: u32, l: &str) -> String {
    let created_at = now();
    let info = store
        .create_enrollment_token(NewEnrollmentToken {
            id: new_id("et"),
            token_hash: token_hash(secret),
            labels: labels(l),
            created_at,
            expires_at: created_at + chrono::Duration::seconds(ttl_secs),
            max_uses,
            note: None,
            created_by: "test".into(),
            agent_label_keys: vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()],
        })
        .await
        .unwrap();
    info.id
}

fn new_agent(name: &str, l: &str) -> NewAgent {
    NewAgent {
        id: new_id("ag"),
        name: Some(name.into()),
        public_key: SigningKey::generate().public_key().to_base64(),
        labels: labels(l),
        facts: AgentFacts {
            hostname: "host".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
        },
    }
}

async fn enroll_ok(store: &Store, secret: &str, agent: NewAgent) -> AgentRecord {
    store
        .enroll(token_hash(secret), agent)
        .await
        .unwrap()
        .unwrap()
        .0
}

fn command(id: &str, targets: Vec<(String, DeliveryState)>, ttl_secs: i64) -> NewCommand {
    let key = SigningKey::generate();
    let created_at = now();
    let expires_at = created_at + chrono::Duration::seconds(ttl_secs);
    let audience = Audience::Selector {
        selector: Selector::all(),
    };
    let env = flotilla_shared::command::CommandEnvelope {
        id: id.into(),
        audience: audience.clone(),
        command: Command::Ping(PingArgs {}),
        issued_at: created_at,
        expires_at,
    };
    NewCommand {
        id: id.into(),
        command: Command::Ping(PingArgs {}),
        signed: SignedCommand::sign(&env, &key),
        audience,
        created_at,
        expires_at,
        created_by: "test".into(),
        job_id: None,
        targets,
    }
}

fn result(command_id: &str, status: ResultStatus) -> CommandResult {
    CommandResult {
        command_id: command_id.into(),
        status,
        output: None,
        error: None,
        started_at: now(),
        finished_at: now(),
    }
}

async fn state_of(store: &Store, command_id: &str, agent_id: &str) -> DeliveryState {
    match store
        .command_info(command_id.into(), Some(agent_id.into()))
        .await
        .unwrap()
    {
        CommandLookup::Found(info) => info.state,
        other => panic!("{other:?}"),
    }
}

const GRACE: std::time::Duration = std::time::Duration::from_secs(900);

fn error_code(info: &CommandInfo) -> Option<&str> {
    info.result
        .as_ref()
        .and_then(|r| r.error.as_ref())
        .map(|e| e.code.as_str())
}

async fn info_of(store: &Store, command_id: &str, agent_id: &str) -> CommandInfo {
    match store
        .command_info(command_id.into(), Some(agent_id.into()))
        .await
        .unwrap()
    {
        CommandLookup::Found(info) => *info,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn enrollment_token_used_expired_revoked_unknown() {
    let store = Store::open_for_test();
    token(&store, "once", 3600, 1, "tier=build").await;
    let a = enroll_ok(&store, "once", new_agent("a", "tier=web,zone=1")).await;
    // The token's labels win over the agent's.
    assert_eq!(a.labels, labels("tier=build,zone=1"));
    assert_eq!(
        store
            .enroll(token_hash("once"), new_agent("b", ""))
            .await
            .unwrap()
            .unwrap_err(),
        EnrollRefusal::Used
    );

    token(&store, "expired", -1, 1, "").await;
    assert_eq!(
        store
            .enroll(token_hash("expired"), new_agent("c", ""))
            .await
            .unwrap()
            .unwrap_err(),
        EnrollRefusal::Expired
    );

    let id = token(&store, "revoked", 3600, 5, "").await;
    assert!(store.revoke_enrollment_token(id).await.unwrap());
    assert!(!store
        .revoke_enrollment_token("et_nope".into())
        .await
        .unwrap());
    assert_eq!(
        store
            .enroll(token_hash("revoked"), new_agent("d", ""))
            .await
            .unwrap()
            .unwrap_err(),
        EnrollRefusal::Revoked
    );

    assert_eq!(
        store
            .enroll(token_hash("never-issued"), new_agent("e", ""))
            .await
            .unwrap()
            .unwrap_err(),
        EnrollRefusal::Unknown
    );

    token(&store, "twice", 3600, 2, "").await;
    enroll_ok(&store, "twice", new_agent("f", "")).await;
    enroll_ok(&store, "twice", new_agent("g", "")).await;
    let list = store.list_enrollment_tokens().await.unwrap();
    let twice = list.iter().find(|t| t.max_uses == 2 && !t.revoked).unwrap();
    assert_eq!(twice.uses, 2);
    assert_eq!(store.agents().await.unwrap().len(), 3);
}

#[tokio::test]
async fn api_tokens_by_hash() {
    let store = Store::open_for_test();
    assert!(!store.has_admin_token().await.unwrap());
    store
        .create_api_token(NewApiToken {
            id: "tok_1".into(),
            token_hash: token_hash("secret"),
            name: "admin".into(),
            scope: Scope::Admin,
            created_at: now(),
            created_by: "relay".into(),
        })
        .await
        .unwrap();
    assert!(store.has_admin_token().await.unwrap());
    let caller = store
        .api_caller(token_hash("secret"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.scope, Scope::Admin);
    assert_eq!(caller.name, "admin");
    assert!(store
        .api_caller(token_hash("other"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn events_are_inserted_exactly_once() {
    let store = Store::open_for_test();
    let event = |kind| AgentEvent {
        kind,
        at: now(),
        container_id: None,
        container_name: Some("web".into()),
        message: "container web died".into(),
        attributes: Default::default(),
    };
    assert!(store
        .insert_event("ag_1".into(), 1, event(EventKind::ContainerDied))
        .await
        .unwrap());
    // A re-sent outbox item (same agent, same seq) is ignored.
    assert!(!store
        .insert_event("ag_1".into(), 1, event(EventKind::ContainerDied))
        .await
        .unwrap());
    assert!(store
        .insert_event("ag_2".into(), 1, event(EventKind::ContainerDied))
        .await
        .unwrap());
    assert!(store
        .insert_event("ag_1".into(), 2, event(EventKind::ContainerOom))
        .await
        .unwrap());
    let all = store
        .events(
            "ag_1".into(),
            EventQuery {
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].id < all[1].id);
    let oom = store
        .events(
            "ag_1".into(),
            EventQuery {
                kind: Some("container.oom".into()),
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(oom.len(), 1);
    let after = store
        .events(
            "ag_1".into(),
            EventQuery {
                after_id: Some(all[0].id),
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(after, vec![all[1].clone()]);
}

#[tokio::test]
async fn delivery_state_transitions() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    store
        .create_command(command(
            "cmd_1",
            vec![(a.id.clone(), DeliveryState::Queued)],
            600,
        ))
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_1", &a.id).await,
        DeliveryState::Queued
    );
    let pending = store.pending_commands(a.id.clone()).await.unwrap();
    assert_eq!(pending.len(), 1);
    store
        .mark_sent("cmd_1".into(), vec![a.id.clone()])
        .await
        .unwrap();
    assert_eq!(state_of(&store, "cmd_1", &a.id).await, DeliveryState::Sent);
    assert!(store
        .mark_received("cmd_1".into(), a.id.clone())
        .await
        .unwrap());
    assert_eq!(
        state_of(&store, "cmd_1", &a.id).await,
        DeliveryState::Received
    );
    // Received commands are still re-sent on reconnect (the agent answers from its journal).
    assert_eq!(store.pending_commands(a.id.clone()).await.unwrap().len(), 1);
    // sent is never a step back from received.
    store
        .mark_sent("cmd_1".into(), vec![a.id.clone()])
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_1", &a.id).await,
        DeliveryState::Received
    );

    assert_eq!(
        store
            .record_result(a.id.clone(), result("cmd_1", ResultStatus::Failed))
            .await
            .unwrap(),
        ResultOutcome::Recorded {
            state: DeliveryState::Failed,
            job_id: None,
            replaced: None,
            ended: Vec::new(),
            update: None,
        }
    );
    // A duplicate result changes nothing.
    assert_eq!(
        store
            .record_result(a.id.clone(), result("cmd_1", ResultStatus::Succeeded))
            .await
            .unwrap(),
        ResultOutcome::AlreadyFinal
    );
    assert_eq!(
        state_of(&store, "cmd_1", &a.id).await,
        DeliveryState::Failed
    );
    assert!(store
        .pending_commands(a.id.clone())
        .await
        .unwrap()
        .is_empty());
    // Results for deliveries that do not exist are recognised.
    assert_eq!(
        store
            .record_result("ag_other".into(), result("cmd_1", ResultStatus::Succeeded))
            .await
            .unwrap(),
        ResultOutcome::Unknown
    );
    assert!(!store
        .mark_received("cmd_nope".into(), a.id.clone())
        .await
        .unwrap());
}

#[tokio::test]
async fn expiry_and_revocation_end_deliveries() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    let b = enroll_ok(&store, "t", new_agent("b", "")).await;
    store
        .create_command(command(
            "cmd_old",
            vec![(a.id.clone(), DeliveryState::Queued)],
            -1,
        ))
        .await
        .unwrap();
    store
        .create_command(command(
            "cmd_new",
            vec![(a.id.clone(), DeliveryState::Queued)],
            600,
        ))
        .await
        .unwrap();
    store
        .create_command(command(
            "cmd_b",
            vec![(b.id.clone(), DeliveryState::Queued)],
            600,
        ))
        .await
        .unwrap();
    // Expired commands are not re-sent, and the sweeper ends them as undelivered.
    let pending = store.pending_commands(a.id.clone()).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, "cmd_new");
    let ended = store.expire_deliveries(now(), GRACE).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].command_id, "cmd_old");
    assert_eq!(
        state_of(&store, "cmd_old", &a.id).await,
        DeliveryState::Undelivered
    );
    assert!(store
        .expire_deliveries(now(), GRACE)
        .await
        .unwrap()
        .is_empty());

    let ended = store.revoke_agent(b.id.clone()).await.unwrap().unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(
        state_of(&store, "cmd_b", &b.id).await,
        DeliveryState::Undelivered
    );
    assert!(store
        .agent(b.id.clone())
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(store
        .revoke_agent("ag_nope".into())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn job_dispatch_honours_limits() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let mut agents = Vec::new();
    for n in ["a", "b", "c", "d"] {
        agents.push(enroll_ok(&store, "t", new_agent(n, "")).await.id);
    }
    let mut cmd = command(
        "cmd_job",
        agents
            .iter()
            .map(|a| (a.clone(), DeliveryState::Pending))
            .collect(),
        600,
    );
    cmd.job_id = Some("job_1".into());
    store
        .create_job(
            NewJob {
                id: "job_1".into(),
                selector: Selector::all(),
                max_concurrency: 2,
                max_errors: Some(0),
                created_at: now(),
                expires_at: cmd.expires_at,
                created_by: "test".into(),
            },
            cmd,
        )
        .await
        .unwrap();
    let step = store.advance_job("job_1".into()).await.unwrap().unwrap();
    assert_eq!(step.queued, agents[..2].to_vec());
    assert!(step.signed.is_some());
    assert_eq!(step.state, Some(JobState::Running));
    // Nothing more while both are in flight.
    let step = store.advance_job("job_1".into()).await.unwrap().unwrap();
    assert!(step.queued.is_empty());

    // One success frees a slot.
    store
        .record_result(
            agents[0].clone(),
            result("cmd_job", ResultStatus::Succeeded),
        )
        .await
        .unwrap();
    let step = store.advance_job("job_1".into()).await.unwrap().unwrap();
    assert_eq!(step.queued, vec![agents[2].clone()]);

    // One failure exceeds max_errors 0: the last pending target is skipped, and the job stops
    // once the in-flight one finishes.
    store
        .record_result(agents[1].clone(), result("cmd_job", ResultStatus::Failed))
        .await
        .unwrap();
    let step = store.advance_job("job_1".into()).await.unwrap().unwrap();
    assert_eq!(step.skipped, 1);
    assert!(step.queued.is_empty());
    assert_eq!(step.state, Some(JobState::Running));
    store
        .record_result(
            agents[2].clone(),
            result("cmd_job", ResultStatus::Succeeded),
        )
        .await
        .unwrap();
    let step = store.advance_job("job_1".into()).await.unwrap().unwrap();
    assert_eq!(step.state, Some(JobState::Stopped));
    let info = store.job_info("job_1".into()).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Stopped);
    assert_eq!(info.counts.targets, 4);
    assert_eq!(info.counts.succeeded, 2);
    assert_eq!(info.counts.failed, 1);
    assert_eq!(info.counts.skipped, 1);
    assert_eq!(info.targets[3].state, DeliveryState::Skipped);
    assert!(store.running_jobs().await.unwrap().is_empty());
    // A job command needs ?agent=.
    assert!(matches!(
        store.command_info("cmd_job".into(), None).await.unwrap(),
        CommandLookup::NeedsAgent { .. }
    ));
}

#[tokio::test]
async fn heartbeats_and_labels_persist() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "x=1")).await;
    let hb = Heartbeat {
        at: now(),
        agent_version: "0.2.0".into(),
        host: Default::default(),
        docker: Default::default(),
        backup: None,
        compose_drift: Vec::new(),
    };
    let at = now();
    store
        .save_heartbeats(vec![HeartbeatWrite {
            agent_id: a.id.clone(),
            heartbeat: Arc::new(hb.clone()),
            received_at: at,
        }])
        .await
        .unwrap();
    let got = store.agent(a.id.clone()).await.unwrap().unwrap();
    assert_eq!(got.last_heartbeat, Some(hb));
    assert_eq!(got.last_heartbeat_at, Some(at));
    assert_eq!(got.agent_version, "0.2.0");
    let got = store
        .set_agent_labels(a.id.clone(), labels("y=2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.labels, labels("y=2"));
    assert!(store
        .set_agent_labels("ag_nope".into(), labels("y=2"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn file_database_migrates_once() {
    let dir = std::env::temp_dir().join(new_id("relay-store-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.db");
    {
        let store = Store::open(&path).await.unwrap();
        token(&store, "t", 3600, 1, "").await;
    }
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.list_enrollment_tokens().await.unwrap().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn accepted_commands_without_result_fail_after_grace_and_real_results_win() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    // Expired a second ago and accepted by the agent.
    store
        .create_command(command(
            "cmd_rx",
            vec![(a.id.clone(), DeliveryState::Queued)],
            -1,
        ))
        .await
        .unwrap();
    store
        .mark_sent("cmd_rx".into(), vec![a.id.clone()])
        .await
        .unwrap();
    assert!(store
        .mark_received("cmd_rx".into(), a.id.clone())
        .await
        .unwrap());
    // Within the grace period the relay keeps waiting for the result.
    assert!(store
        .expire_deliveries(now(), GRACE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        state_of(&store, "cmd_rx", &a.id).await,
        DeliveryState::Received
    );
    // After it, the delivery fails with no_result instead of staying received for ever.
    let ended = store
        .expire_deliveries(now(), std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        ended,
        vec![Finalised {
            command_id: "cmd_rx".into(),
            agent_id: a.id.clone(),
            job_id: None,
            state: DeliveryState::Failed,
            update: None,
        }]
    );
    let info = info_of(&store, "cmd_rx", &a.id).await;
    assert_eq!(info.state, DeliveryState::Failed);
    assert_eq!(error_code(&info), Some(relay_error_codes::NO_RESULT));
    // The real result arriving late replaces the relay's guess, once.
    assert_eq!(
        store
            .record_result(a.id.clone(), result("cmd_rx", ResultStatus::Succeeded))
            .await
            .unwrap(),
        ResultOutcome::Recorded {
            state: DeliveryState::Succeeded,
            job_id: None,
            replaced: Some(DeliveryState::Failed),
            ended: Vec::new(),
            update: None,
        }
    );
    assert_eq!(
        store
            .record_result(a.id.clone(), result("cmd_rx", ResultStatus::Failed))
            .await
            .unwrap(),
        ResultOutcome::AlreadyFinal
    );
    assert_eq!(
        state_of(&store, "cmd_rx", &a.id).await,
        DeliveryState::Succeeded
    );

    // Expired while only sent (the `received` frame was lost), then the result arrives.
    store
        .create_command(command(
            "cmd_sent",
            vec![(a.id.clone(), DeliveryState::Queued)],
            -1,
        ))
        .await
        .unwrap();
    store
        .mark_sent("cmd_sent".into(), vec![a.id.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.expire_deliveries(now(), GRACE).await.unwrap().len(),
        1
    );
    assert_eq!(
        state_of(&store, "cmd_sent", &a.id).await,
        DeliveryState::Undelivered
    );
    assert_eq!(
        store
            .record_result(a.id.clone(), result("cmd_sent", ResultStatus::Failed))
            .await
            .unwrap(),
        ResultOutcome::Recorded {
            state: DeliveryState::Failed,
            job_id: None,
            replaced: Some(DeliveryState::Undelivered),
            ended: Vec::new(),
            update: None,
        }
    );
    // A real failure is final: a later result does not replace it.
    assert_eq!(
        store
            .record_result(a.id.clone(), result("cmd_sent", ResultStatus::Succeeded))
            .await
            .unwrap(),
        ResultOutcome::AlreadyFinal
    );
}

#[tokio::test]
async fn revoking_fails_accepted_deliveries_instead_of_undelivered() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    for id in ["cmd_q", "cmd_r"] {
        store
            .create_command(command(
                id,
                vec![(a.id.clone(), DeliveryState::Queued)],
                600,
            ))
            .await
            .unwrap();
    }
    store
        .mark_sent("cmd_r".into(), vec![a.id.clone()])
        .await
        .unwrap();
    store
        .mark_received("cmd_r".into(), a.id.clone())
        .await
        .unwrap();
    let mut ended = store.revoke_agent(a.id.clone()).await.unwrap().unwrap();
    ended.sort_by(|x, y| x.command_id.cmp(&y.command_id));
    let states: Vec<_> = ended
        .iter()
        .map(|f| (f.command_id.as_str(), f.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("cmd_q", DeliveryState::Undelivered),
            ("cmd_r", DeliveryState::Failed)
        ]
    );
    let info = info_of(&store, "cmd_r", &a.id).await;
    assert_eq!(info.state, DeliveryState::Failed);
    assert_eq!(error_code(&info), Some(relay_error_codes::AGENT_REVOKED));
}

#[tokio::test]
async fn fan_out_marks_many_deliveries_sent_at_once() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(enroll_ok(&store, "t", new_agent(n, "")).await.id);
    }
    let targets = vec![
        (ids[0].clone(), DeliveryState::Queued),
        (ids[1].clone(), DeliveryState::Queued),
        (ids[2].clone(), DeliveryState::Pending),
    ];
    store
        .create_command(command("cmd_fan", targets, 600))
        .await
        .unwrap();
    store
        .mark_sent("cmd_fan".into(), ids.clone())
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_fan", &ids[0]).await,
        DeliveryState::Sent
    );
    assert_eq!(
        state_of(&store, "cmd_fan", &ids[1]).await,
        DeliveryState::Sent
    );
    // Only queued deliveries move.
    assert_eq!(
        state_of(&store, "cmd_fan", &ids[2]).await,
        DeliveryState::Pending
    );
}

#[tokio::test]
async fn file_database_reads_use_read_only_connections() {
    let dir = std::env::temp_dir().join(new_id("relay-store-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("relay.db")).await.unwrap();
    assert_eq!(store.read_connections(), READ_CONNECTIONS);
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "x=1")).await;
    let hb = Heartbeat {
        at: now(),
        agent_version: "0.2.0".into(),
        host: Default::default(),
        docker: Default::default(),
        backup: None,
        compose_drift: Vec::new(),
    };
    let at = now();
    store
        .save_heartbeats(vec![HeartbeatWrite {
            agent_id: a.id.clone(),
            heartbeat: Arc::new(hb.clone()),
            received_at: at,
        }])
        .await
        .unwrap();
    // Every committed write is visible to the read connections at once.
    for _ in 0..READ_CONNECTIONS * 2 {
        let auth = store.agent_auth(a.id.clone()).await.unwrap().unwrap();
        assert_eq!(auth.labels, labels("x=1"));
        assert!(!auth.revoked);
        assert_eq!(auth.agent_version, "0.2.0");
    }
    // Listing does not load heartbeats; the startup cache load does.
    let listed = store.agents().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_heartbeat, None);
    assert_eq!(listed[0].last_heartbeat_at, Some(at));
    let latest = store.latest_heartbeats().await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(*latest[0].heartbeat, hb);
    // What another relay reads back: written at or after a time (`peers.rs`).
    let since = store.heartbeats_since(at).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(*since[0].heartbeat, hb);
    let later = at + chrono::Duration::seconds(1);
    assert!(store.heartbeats_since(later).await.unwrap().is_empty());
    assert_eq!(
        store.agent_targets().await.unwrap(),
        vec![(a.id.clone(), labels("x=1"))]
    );
    // The read connections cannot write.
    let write = store
        .read(|c| {
            c.execute("DELETE FROM agents", params![])?;
            Ok(())
        })
        .await;
    assert!(write.is_err(), "a read connection wrote");
    assert_eq!(store.agents().await.unwrap().len(), 1);
    store.revoke_agent(a.id.clone()).await.unwrap().unwrap();
    assert!(
        store
            .agent_auth(a.id.clone())
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(store.agent_targets().await.unwrap().is_empty());
    assert!(store.latest_heartbeats().await.unwrap().is_empty());
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn retention_prunes_old_events_audit_and_finished_commands() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    let event = AgentEvent {
        kind: EventKind::ContainerDied,
        at: now(),
        container_id: None,
        container_name: None,
        message: "died".into(),
        attributes: Default::default(),
    };
    store
        .insert_event(a.id.clone(), 1, event.clone())
        .await
        .unwrap();
    store
        .audit(AuditEntry {
            ts: now(),
            actor: "test".into(),
            action: "x".into(),
            target: "-".into(),
            outcome: "ok".into(),
            detail: None,
        })
        .await
        .unwrap();
    // Finished and expired: pruned. Expired but unfinished: kept (the sweeper ends it first).
    // Finished but not expired yet: kept.
    for (id, ttl) in [("cmd_done", -1), ("cmd_open", -1), ("cmd_fresh", 3600)] {
        store
            .create_command(command(
                id,
                vec![(a.id.clone(), DeliveryState::Queued)],
                ttl,
            ))
            .await
            .unwrap();
    }
    for id in ["cmd_done", "cmd_fresh"] {
        store
            .record_result(a.id.clone(), result(id, ResultStatus::Succeeded))
            .await
            .unwrap();
    }
    // A finished job's command goes with its job; a running job's command stays.
    let mut cmd = command("cmd_job", vec![(a.id.clone(), DeliveryState::Pending)], -1);
    cmd.job_id = Some("job_1".into());
    store
        .create_job(
            NewJob {
                id: "job_1".into(),
                selector: Selector::all(),
                max_concurrency: 1,
                max_errors: None,
                created_at: now(),
                expires_at: cmd.expires_at,
                created_by: "test".into(),
            },
            cmd,
        )
        .await
        .unwrap();
    store.expire_deliveries(now(), GRACE).await.unwrap(); // cmd_open and cmd_job → undelivered
    store
        .create_command(command(
            "cmd_open2",
            vec![(a.id.clone(), DeliveryState::Queued)],
            -1,
        ))
        .await
        .unwrap();
    store.advance_job("job_1".into()).await.unwrap();
    assert!(store.running_jobs().await.unwrap().is_empty());

    // Nothing is older than a day ago.
    let pruned = store
        .prune(now() - chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned, Pruned::default());

    let pruned = store
        .prune(now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            events: 1,
            audit: 1,
            commands: 3, // cmd_done, cmd_open (undelivered), cmd_job
            updates: 0,
            backups: 0,
        }
    );
    assert!(store
        .events(
            a.id.clone(),
            EventQuery {
                limit: 10,
                ..EventQuery::default()
            }
        )
        .await
        .unwrap()
        .is_empty());
    assert!(store.recent_audit(10).await.unwrap().is_empty());
    for gone in ["cmd_done", "cmd_open"] {
        assert_eq!(
            store
                .command_info(gone.into(), Some(a.id.clone()))
                .await
                .unwrap(),
            CommandLookup::NotFound
        );
    }
    assert!(store.job_info("job_1".into()).await.unwrap().is_none());
    for kept in ["cmd_fresh", "cmd_open2"] {
        assert!(matches!(
            store
                .command_info(kept.into(), Some(a.id.clone()))
                .await
                .unwrap(),
            CommandLookup::Found(_)
        ));
    }
    // Events inserted again after pruning still deduplicate by (agent, seq) from now on.
    assert!(store.insert_event(a.id.clone(), 2, event).await.unwrap());
}

mod backups;
mod cluster;
mod enrollment;
mod fleet;
mod notifications;
mod releasefiles;
mod rollouts;
mod transfer;
mod updates;
