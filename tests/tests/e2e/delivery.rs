//! Nothing is lost when either side restarts or the link drops: commands wait for offline agents,
//! survive relay restarts, and results held in an agent's outbox arrive exactly once.

use crate::{images, DEADLINE};
use flotilla_shared::api::{AgentStatus, DeliveryState};
use flotilla_shared::command::{Command, ContainerListArgs, ContainerStopArgs};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame};
use flotilla_tests::fake_agent;
use flotilla_tests::harness::{eventually, scope, Agent, Containers, Relay};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_an_offline_agent_is_delivered_when_it_returns() {
    let img = images().await;
    let scope = scope("offline");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;
    let mut agent = Agent::start(&relay, "host-a", "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    agent.kill().await;
    api.wait_status(&agent.id, AgentStatus::Offline, DEADLINE)
        .await;

    let info = api
        .command(
            &agent.id,
            Command::ContainerStop(ContainerStopArgs {
                container: web.clone(),
                timeout_secs: Some(1),
            }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        info.state,
        DeliveryState::Queued,
        "persisted, waiting: {info:?}"
    );
    assert!(docker.running(&web).await);

    agent.run().await;
    let done = api.wait_final(&info.id, DEADLINE).await;
    assert_eq!(done.state, DeliveryState::Succeeded, "{done:?}");
    assert!(!docker.running(&web).await, "the queued stop really ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_relay_restart_agents_reconnect_and_queued_commands_complete() {
    let img = images().await;
    let scope = scope("rrestart");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let mut relay = Relay::start().await;
    let a = Agent::start(&relay, "host-a", "", &scope).await;
    let mut b = Agent::start(&relay, "host-b", "", &scope).await;
    let api = relay.api();
    api.wait_online(&a.id, DEADLINE).await;
    api.wait_online(&b.id, DEADLINE).await;

    // b goes away; a command for it is queued; then the relay crashes and comes back.
    b.kill().await;
    api.wait_status(&b.id, AgentStatus::Offline, DEADLINE).await;
    let queued = api
        .command(
            &b.id,
            Command::ContainerStop(ContainerStopArgs {
                container: web.clone(),
                timeout_secs: Some(1),
            }),
            None,
        )
        .await
        .unwrap();

    relay.restart().await;
    let started = Instant::now();
    let api = relay.api();
    api.wait_online(&a.id, Duration::from_secs(90)).await;
    println!(
        "relay restart → agent back online in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    b.run().await;
    let done = api.wait_final(&queued.id, DEADLINE).await;
    assert_eq!(done.state, DeliveryState::Succeeded, "{done:?}");
    assert!(!docker.running(&web).await);

    // The reconnected agent answers new commands too.
    let info = api
        .command(
            &a.id,
            Command::ContainerList(ContainerListArgs {
                all: true,
                label: None,
            }),
            Some(30),
        )
        .await
        .unwrap();
    assert_eq!(info.state, DeliveryState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_held_in_the_outbox_across_an_agent_crash_arrive_exactly_once() {
    let img = images().await;
    let scope = scope("outbox");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "host-a", "", &scope).await;
    // Test hook: the agent runs commands and records results, but does not send its outbox.
    agent.set_env("FLOTILLA_TEST_HOLD_OUTBOX", "true");
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    let info = api
        .command(
            &agent.id,
            Command::ContainerStop(ContainerStopArgs {
                container: web.clone(),
                timeout_secs: Some(1),
            }),
            None,
        )
        .await
        .unwrap();
    // The stop ran (and its die event happened) but nothing reached the relay yet. The agent's
    // own journal says when it finished; killing it earlier would (rightly) report the command
    // as interrupted instead.
    let db = agent.dir.path().join("agent.db");
    eventually(
        DEADLINE,
        "the agent to journal the stop as done",
        || async {
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()?;
            let status: String = conn
                .query_row(
                    "SELECT status FROM journal WHERE id = ?1",
                    [&info.id],
                    |r| r.get(0),
                )
                .ok()?;
            (status == "done").then_some(())
        },
    )
    .await;
    assert!(!docker.running(&web).await, "stopped by the agent");
    let c = api.command_info(&info.id).await;
    assert!(!c.state.is_final(), "result must still be held: {c:?}");

    // Crash the agent and start it without the hook: the outbox survives in its SQLite file.
    agent.kill().await;
    agent.remove_env("FLOTILLA_TEST_HOLD_OUTBOX");
    agent.run().await;
    let done = api.wait_final(&info.id, DEADLINE).await;
    assert_eq!(done.state, DeliveryState::Succeeded, "{done:?}");

    let died = |events: &[flotilla_shared::api::EventRecord]| {
        events
            .iter()
            .filter(|e| {
                e.event.kind == EventKind::ContainerDied
                    && e.event.container_name.as_deref() == Some(web.as_str())
            })
            .count()
    };
    eventually(DEADLINE, "container.died event", || async {
        (died(&api.events(&agent.id).await) >= 1).then_some(())
    })
    .await;
    // Another command proves the link is live and everything before it was flushed.
    let ping = api
        .command(&agent.id, Command::Ping(Default::default()), Some(30))
        .await
        .unwrap();
    assert_eq!(ping.state, DeliveryState::Succeeded);
    let events = api.events(&agent.id).await;
    assert_eq!(died(&events), 1, "exactly once: {events:#?}");
    let started = events
        .iter()
        .filter(|e| e.event.kind == EventKind::AgentStarted)
        .count();
    assert_eq!(
        started, 2,
        "one agent.started per process start: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_stores_a_resent_outbox_item_once() {
    let relay = Relay::start().await;
    let mut fake = fake_agent::start(&relay, "fake-1", "").await;
    let id = fake.id.clone();
    let event = OutboxItem::Event(flotilla_shared::heartbeat::AgentEvent {
        kind: EventKind::ContainerDied,
        at: chrono::Utc::now(),
        container_id: Some("abc".into()),
        container_name: Some("web".into()),
        message: "container web died with exit code 1".into(),
        attributes: Default::default(),
    });
    let frame = AgentFrame::Outbox {
        seq: 1,
        item: event,
    };
    for _ in 0..2 {
        fake.send(&frame).await.unwrap();
        let acked = fake
            .recv_until(DEADLINE, |f| match f {
                RelayFrame::Ack { seq } => Some(*seq),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(acked, 1);
    }
    // Reconnect (as after an agent restart that lost the ack) and send it once more.
    let key = flotilla_shared::signing::SigningKey::from_pkcs8(fake.key.pkcs8()).unwrap();
    drop(fake);
    let mut fake = fake_agent::connect(&relay, id.clone(), key).await.unwrap();
    fake.send(&frame).await.unwrap();
    fake.recv_until(DEADLINE, |f| {
        matches!(f, RelayFrame::Ack { seq: 1 }).then_some(())
    })
    .await
    .unwrap();

    let events = relay.api().events(&id).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        events[0].event.message,
        "container web died with exit code 1"
    );
}
