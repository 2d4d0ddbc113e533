//! Engines stepped with the time a test chooses: each is built from exactly what it uses (a
//! store, the commands service) and driven through `step(now)`, with no running relay, no
//! ticks and no sleeps.

use crate::commands::{Commands, Completion};
use crate::hub::Hub;
use crate::jobs::{ExpirySweeper, JobEngine};
use crate::metrics::Metrics;
use crate::retention::Retention;
use crate::store::{
    now, AgentRecord, AuditEntry, CommandLookup, NewAgent, NewEnrollmentToken, NewJob, Store,
};
use chrono::{DateTime, Utc};
use flotilla_shared::api::{AgentFacts, DeliveryState, JobState};
use flotilla_shared::command::{Audience, Command, CommandResult, PingArgs, ResultStatus};
use flotilla_shared::ids::{new_id, token_hash};
use flotilla_shared::selector::{Labels, Selector};
use flotilla_shared::signing::SigningKey;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_TTL_SECS: u64 = 600;

fn commands(store: &Store) -> Commands {
    Commands::new(
        store.clone(),
        Arc::new(Hub::new()),
        Arc::new(SigningKey::generate()),
        Arc::new(Metrics::default()),
        DEFAULT_TTL_SECS,
    )
}

async fn agents(store: &Store, n: usize) -> Vec<AgentRecord> {
    let created_at = now();
    store
        .create_enrollment_token(NewEnrollmentToken {
            id: new_id("et"),
            token_hash: token_hash("secret"),
            labels: Labels::new(),
            created_at,
            expires_at: created_at + chrono::Duration::hours(1),
            max_uses: n as u32,
            note: None,
            created_by: "test".into(),
            agent_label_keys: vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()],
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let agent = NewAgent {
            id: new_id("ag"),
            name: Some(format!("a{i}")),
            public_key: SigningKey::generate().public_key().to_base64(),
            labels: Labels::new(),
            facts: AgentFacts {
                hostname: "host".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
            },
        };
        out.push(
            store
                .enroll(token_hash("secret"), agent)
                .await
                .unwrap()
                .unwrap()
                .0,
        );
    }
    out
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

fn ping_result(command_id: &str) -> CommandResult {
    CommandResult {
        command_id: command_id.into(),
        status: ResultStatus::Succeeded,
        output: None,
        error: None,
        started_at: now(),
        finished_at: now(),
    }
}

#[tokio::test]
async fn the_expiry_sweeper_ends_a_delivery_only_once_stepped_past_its_expiry() {
    let store = Store::open_for_test();
    let commands = commands(&store);
    let agent = agents(&store, 1).await.remove(0);
    let mut completions = commands.subscribe();
    let c = commands
        .new_agent_command("cmd_1", &agent.id, Command::Ping(PingArgs {}), None, "test")
        .unwrap();
    let expires_at = c.expires_at;
    store.create_command(c).await.unwrap();
    let sweeper = ExpirySweeper::new(store.clone(), commands.clone(), Duration::from_secs(900));

    // One second before its expiry nothing happens; one second after, it is undelivered.
    sweeper
        .step(expires_at - chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_1", &agent.id).await,
        DeliveryState::Queued
    );
    assert!(completions.try_recv().is_err());
    sweeper
        .step(expires_at + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_1", &agent.id).await,
        DeliveryState::Undelivered
    );
    // The end is published, with what a subscriber needs to react.
    assert_eq!(
        completions.try_recv().unwrap(),
        Completion {
            command_id: "cmd_1".into(),
            agent_id: agent.id.clone(),
            job_id: None,
            state: DeliveryState::Undelivered,
        }
    );
}

#[tokio::test]
async fn an_accepted_command_without_result_fails_only_after_the_grace() {
    let store = Store::open_for_test();
    let commands = commands(&store);
    let agent = agents(&store, 1).await.remove(0);
    let c = commands
        .new_agent_command("cmd_1", &agent.id, Command::Ping(PingArgs {}), None, "test")
        .unwrap();
    let expires_at = c.expires_at;
    store.create_command(c).await.unwrap();
    store
        .mark_sent("cmd_1".into(), vec![agent.id.clone()])
        .await
        .unwrap();
    store
        .mark_received("cmd_1".into(), agent.id.clone())
        .await
        .unwrap();
    let grace = Duration::from_secs(900);
    let sweeper = ExpirySweeper::new(store.clone(), commands.clone(), grace);
    sweeper
        .step(expires_at + chrono::Duration::seconds(899))
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_1", &agent.id).await,
        DeliveryState::Received
    );
    sweeper
        .step(expires_at + chrono::Duration::seconds(901))
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "cmd_1", &agent.id).await,
        DeliveryState::Failed
    );
}

#[tokio::test]
async fn the_job_engine_dispatches_the_next_target_once_one_finishes() {
    let store = Store::open_for_test();
    let commands = commands(&store);
    let agents: Vec<String> = agents(&store, 3).await.into_iter().map(|a| a.id).collect();
    let issued_at = now();
    let expires_at = commands
        .expiry(None, &Command::Ping(PingArgs {}), 1, issued_at)
        .unwrap();
    let audience = Audience::Selector {
        selector: Selector::all(),
    };
    let command = Command::Ping(PingArgs {});
    let signed = commands.sign("cmd_job", audience.clone(), &command, issued_at, expires_at);
    store
        .create_job(
            NewJob {
                id: "job_1".into(),
                selector: Selector::all(),
                max_concurrency: 1,
                max_errors: None,
                created_at: issued_at,
                expires_at,
                created_by: "test".into(),
            },
            crate::store::NewCommand {
                id: "cmd_job".into(),
                command,
                signed,
                audience,
                created_at: issued_at,
                expires_at,
                created_by: "test".into(),
                job_id: Some("job_1".into()),
                targets: agents
                    .iter()
                    .map(|a| (a.clone(), DeliveryState::Pending))
                    .collect(),
            },
        )
        .await
        .unwrap();
    let engine = JobEngine::new(store.clone(), commands.clone());
    let step_at = |t: DateTime<Utc>| {
        let engine = engine.clone();
        async move { engine.step(t).await.unwrap() }
    };

    step_at(now()).await;
    let states = |store: Store, agents: Vec<String>| async move {
        let mut out = Vec::new();
        for a in &agents {
            out.push(state_of(&store, "cmd_job", a).await);
        }
        out
    };
    assert_eq!(
        states(store.clone(), agents.clone()).await,
        [
            DeliveryState::Queued,
            DeliveryState::Pending,
            DeliveryState::Pending
        ]
    );
    // Stepping again changes nothing while the first is in flight.
    step_at(now()).await;
    assert_eq!(
        states(store.clone(), agents.clone()).await[1],
        DeliveryState::Pending
    );
    // The first target answers: the next step dispatches the second.
    store
        .mark_sent("cmd_job".into(), vec![agents[0].clone()])
        .await
        .unwrap();
    store
        .record_result(agents[0].clone(), ping_result("cmd_job"))
        .await
        .unwrap();
    step_at(now()).await;
    assert_eq!(
        states(store.clone(), agents.clone()).await,
        [
            DeliveryState::Succeeded,
            DeliveryState::Queued,
            DeliveryState::Pending
        ]
    );
    let info = store.job_info("job_1".into()).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Running);
}

#[tokio::test]
async fn retention_deletes_only_what_is_older_than_its_days_at_the_stepped_time() {
    let store = Store::open_for_test();
    let written = now();
    store
        .audit(AuditEntry {
            ts: written,
            actor: "admin".into(),
            action: "agent.revoke".into(),
            target: "ag_1".into(),
            outcome: "ok".into(),
            detail: None,
        })
        .await
        .unwrap();
    let retention = Retention::new(store.clone(), 30);
    let p = retention
        .step(written + chrono::Duration::days(29))
        .await
        .unwrap();
    assert_eq!(p.audit, 0);
    assert_eq!(store.recent_audit(10).await.unwrap().len(), 1);
    let p = retention
        .step(written + chrono::Duration::days(31))
        .await
        .unwrap();
    assert_eq!(p.audit, 1);
    assert!(store.recent_audit(10).await.unwrap().is_empty());
    // retention_days = 0 keeps everything.
    let p = Retention::new(store.clone(), 0)
        .step(written + chrono::Duration::days(3650))
        .await
        .unwrap();
    assert_eq!(p, crate::store::Pruned::default());
}

#[tokio::test]
async fn the_alerts_engine_fires_unreachable_only_once_the_stepped_time_is_past_the_threshold() {
    let store = Store::open_for_test();
    let agent = agents(&store, 1).await.remove(0);
    let config = crate::config::RelayConfig::default();
    let handle = Arc::new(crate::alerts::AlertsHandle::default());
    let started = handle.started_at;
    let engine = crate::alerts::AlertsEngine::new(
        store.clone(),
        Arc::new(Hub::new()),
        Arc::new(crate::heartbeats::HeartbeatCache::default()),
        Arc::new(Metrics::default()),
        handle,
        &config,
        crate::alerts::notify::Notifier::disabled(store.clone()),
    );
    let after = crate::alerts::unreachable_after(&config);
    let after = chrono::Duration::from_std(after).unwrap();
    // Within the threshold after the relay's start: nothing fires (and the rule is held).
    let applied = engine
        .step(started + after - chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(applied.fired, 0, "{applied:?}");
    // Past it, the disconnected agent is unreachable and notified (no channel: at once).
    let applied = engine
        .step(started + after + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(applied.fired, 1, "{applied:?}");
    let alerts = store
        .alerts(crate::alerts::AlertQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].rule, "agent_unreachable");
    assert_eq!(alerts[0].agent_id.as_deref(), Some(agent.id.as_str()));
    assert_eq!(applied.notify.len(), 1, "{applied:?}");
    assert!(alerts[0].notified_at.is_some(), "{alerts:?}");
}
