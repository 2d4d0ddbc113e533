//! Bad frames from one connection never disturb the others: malformed JSON gets a protocol
//! error and the connection lives on; an oversized frame closes only that connection.

use crate::DEADLINE;
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::Command;
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame};
use flotilla_tests::fake_agent;
use flotilla_tests::harness::{scope, Agent, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_do_not_disturb_other_agents() {
    let relay = Relay::start().await;
    let good = Agent::start(&relay, "good", "", &scope("abuse")).await;
    let api = relay.api();
    api.wait_online(&good.id, DEADLINE).await;

    let mut bad = fake_agent::start(&relay, "bad", "").await;
    for junk in [
        "{not json",
        "[]",
        r#"{"type":"no_such_frame"}"#,
        r#"{"type":"outbox","seq":"x"}"#,
    ] {
        bad.send_text(junk.to_string()).await.unwrap();
        let code = bad
            .recv_until(DEADLINE, |f| match f {
                RelayFrame::Error { code, .. } => Some(code.clone()),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(code, "malformed_frame", "for {junk}");
    }
    // Still connected and served: an outbox item is persisted and acknowledged.
    let item = OutboxItem::Event(flotilla_shared::heartbeat::AgentEvent {
        kind: flotilla_shared::heartbeat::EventKind::AgentStarted,
        at: chrono::Utc::now(),
        container_id: None,
        container_name: None,
        message: "still here".into(),
        attributes: Default::default(),
    });
    bad.send(&AgentFrame::Outbox { seq: 1, item })
        .await
        .unwrap();
    bad.recv_until(DEADLINE, |f| {
        matches!(f, RelayFrame::Ack { seq: 1 }).then_some(())
    })
    .await
    .unwrap();

    // Above the 1 MiB default: only this connection is closed.
    let mut huge = fake_agent::start(&relay, "huge", "").await;
    huge.send_text(format!(
        "{{\"type\":\"error\",\"code\":\"x\",\"message\":\"{}\"}}",
        "a".repeat(2 * 1024 * 1024)
    ))
    .await
    .ok();
    huge.expect_closed(DEADLINE).await;

    // Everyone else is fine.
    let ping = api
        .command(&good.id, Command::Ping(Default::default()), Some(30))
        .await
        .unwrap();
    assert_eq!(ping.state, DeliveryState::Succeeded, "{ping:?}");
    bad.send(&AgentFrame::Received {
        command_id: "cmd_unknown".into(),
    })
    .await
    .unwrap();
    let metrics = reqwest::get(format!("{}/metrics", relay.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flotilla_connected_agents 2"),
        "good + bad still connected: {metrics}"
    );
}
